//! The faults, on a schedule that overlaps the load: a random flusher SIGKILLed and restarted
//! every few seconds, the queue's Redis (or the cluster node holding the most shards) crashed
//! and restarted, PostgreSQL stopped for 10 s, Redis out of memory, PostgreSQL frozen past the
//! flushers' write timeout. Each step asserts its fault really happened and logs a line.

use std::time::{Duration, Instant};

use et_tests::*;
use serde_json::{Value, json};

use crate::load::Load;
use crate::{CLUSTER_SHARDS, Queue, Rig};

/// What was injected, and what the flushers that are gone by now counted.
pub struct Faults {
    /// One line per fault, with when it happened.
    pub log: Vec<String>,
    pub flusher_kills: u32,
    pub redis_restarted: bool,
    pub pg_cycle_done: bool,
    pub redis_full_done: bool,
    pub pg_frozen_done: bool,
    /// `postgres_errors_total` of the flushers killed so far (the running ones are read at the
    /// end): how often a flusher noticed PostgreSQL was down.
    pub pg_errors: f64,
    pg_down_since: Option<Instant>,
    next_kill: Instant,
    rng: u64,
}

impl Faults {
    /// Every fault of the schedule happened.
    pub fn all_done(&self) -> bool {
        self.flusher_kills >= 3
            && self.redis_restarted
            && self.pg_cycle_done
            && self.redis_full_done
            && self.pg_frozen_done
    }
}

/// Injects the faults until the load is done and every fault has happened.
pub async fn inject_while_loading(rig: &mut Rig, load: &Load) -> Faults {
    let mut f = Faults {
        log: Vec::new(),
        flusher_kills: 0,
        redis_restarted: false,
        pg_cycle_done: false,
        redis_full_done: false,
        pg_frozen_done: false,
        pg_errors: 0.0,
        pg_down_since: None,
        next_kill: Instant::now() + Duration::from_secs(2),
        rng: rand_seed(),
    };
    let fault_start = Instant::now();
    loop {
        let load_done = load.is_done();
        if load_done && f.all_done() {
            break;
        }
        let t = fault_start.elapsed();
        if Instant::now() >= f.next_kill && (!load_done || f.flusher_kills < 3) {
            kill_a_flusher(rig, &mut f, t).await;
        }
        if !f.redis_restarted && t >= Duration::from_secs(4) {
            let line = match &mut rig.queue {
                Queue::Single(redis) => {
                    crash_redis(redis, &rig.flushers, &rig.ingests, &rig.key, t).await
                }
                Queue::Cluster(cluster) => {
                    crash_cluster_node(cluster, &rig.flushers, &rig.ingests, &rig.key, t).await
                }
            };
            f.log.push(line);
            f.redis_restarted = true;
        }
        if !f.redis_full_done && f.pg_cycle_done && t >= Duration::from_secs(17) {
            f.log.push(match &rig.queue {
                Queue::Single(redis) => redis_full(redis, &rig.ingests[0], &t).await,
                // A cluster's nodes fill one by one; the single-node phase covers the rules.
                Queue::Cluster(_) => format!(
                    "{:>5.1}s (Redis-full phase runs on a single Redis only)",
                    t.as_secs_f64()
                ),
            });
            f.redis_full_done = true;
        }
        if !f.pg_frozen_done && f.redis_full_done && t >= Duration::from_secs(19) {
            f.log.push(freeze_postgres(rig, t).await);
            f.pg_frozen_done = true;
        }
        cycle_postgres(rig, &mut f, t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f
}

/// SIGKILLs a random flusher (asserting it died of it) and starts a new one in its place.
async fn kill_a_flusher(rig: &mut Rig, f: &mut Faults, t: Duration) {
    let i = (next_rand(&mut f.rng) % rig.flushers.len() as u64) as usize;
    // Its counters die with it: read them first.
    f.pg_errors += flusher_count(&rig.flushers[i], "postgres_errors").await;
    let victim = &mut rig.flushers[i];
    let pid = victim.proc.pid();
    victim.proc.signal("KILL");
    let status = victim.proc.wait_exit(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "flusher {pid} died of SIGKILL");
    rig.flushers[i] = rig.flusher();
    f.flusher_kills += 1;
    f.log.push(format!(
        "{:>5.1}s flusher pid {pid} SIGKILLed and restarted",
        t.as_secs_f64()
    ));
    f.next_kill = Instant::now() + Duration::from_secs(3);
}

/// PostgreSQL stopped (immediate) at 6 s, started again 10 s later.
fn cycle_postgres(rig: &Rig, f: &mut Faults, t: Duration) {
    if f.pg_down_since.is_none() && !f.pg_cycle_done && t >= Duration::from_secs(6) {
        rig.pg.stop();
        f.pg_down_since = Some(Instant::now());
        f.log.push(format!(
            "{:>5.1}s PostgreSQL stopped (immediate)",
            t.as_secs_f64()
        ));
    }
    if let Some(since) = f.pg_down_since
        && since.elapsed() >= Duration::from_secs(10)
    {
        rig.pg.start_server();
        f.pg_down_since = None;
        f.pg_cycle_done = true;
        f.log.push(format!(
            "{:>5.1}s PostgreSQL started again after 10 s",
            t.as_secs_f64()
        ));
    }
}

/// Redis SIGKILLed and restarted. Flushers and ingest-api paused around the crash, so the
/// stream holds entries when Redis dies and nothing changes them: the AOF reload must bring back
/// exactly the entries it held (up to the last ID; ingest-api adds newer ones once it runs
/// again). While it is down ingest-api must answer 503 with Retry-After.
async fn crash_redis(
    redis: &mut RedisServer,
    flushers: &[Flusher],
    ingests: &[Ingest],
    key: &str,
    t: Duration,
) -> String {
    signal_all(flushers.iter().map(|f| &f.proc), "STOP");
    // The clients go on: wait until the stream holds entries (the flushers may have drained it
    // just before they stopped).
    let queued_at = Instant::now();
    let mut conn = redis_conn(&redis.url()).await;
    while xlen(&mut conn, key).await == 0 {
        assert!(
            queued_at.elapsed() < Duration::from_secs(30),
            "nothing was queued with the flushers paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(conn);
    signal_all(ingests.iter().map(|i| &i.proc), "STOP");
    let (before, last) = stable_stream(&redis.url(), key).await;
    redis.kill();
    signal_all(ingests.iter().map(|i| &i.proc), "CONT");
    let refused = probe(&ingests[0]).await;
    redis.restart();
    let after = entries_upto(&redis.url(), key, &last).await;
    signal_all(flushers.iter().map(|f| &f.proc), "CONT");
    assert_eq!(refused, 503, "ingest-api saw Redis down");
    assert!(before > 0, "the stream was empty when Redis was killed");
    assert_eq!(after, before, "the AOF reload lost or added entries");
    format!(
        "{:>5.1}s Redis SIGKILLed and restarted (stream length {before} before, {after} after AOF reload; ingest answered {refused} while down)",
        t.as_secs_f64()
    )
}

/// The cluster node holding the most shards SIGKILLed for 3 s and restarted, the flushers
/// paused for a second first so that its shards hold entries when it dies (and some are pending
/// with a flusher): its restart must bring them back. While it is down ingest-api must go on
/// taking events for the other shards and report the node's shards unreachable.
async fn crash_cluster_node(
    cluster: &mut RedisCluster,
    flushers: &[Flusher],
    ingests: &[Ingest],
    key: &str,
    t: Duration,
) -> String {
    let mut on_node = [0usize; 3];
    for n in 0..CLUSTER_SHARDS {
        on_node[cluster.node_for_key(&shard_key(key, n))] += 1;
    }
    let node = (0..3).max_by_key(|&i| on_node[i]).unwrap_or(0);
    let port = cluster.ports()[node];
    signal_all(flushers.iter().map(|f| &f.proc), "STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = node_shard_len(cluster, node, key);
    cluster.kill(node);
    signal_all(flushers.iter().map(|f| &f.proc), "CONT");
    assert!(
        before > 0,
        "the node's shards were empty when it was killed"
    );
    let pong = redis_cli_out(port, &["ping"]).contains("PONG");
    assert!(!pong, "node :{port} still answers after SIGKILL");
    // While it is down the load goes on; ingest-api writes to the other shards.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(probe(&ingests[0]).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let unreachable = metric(&ingests[0].url, "eventtracker_queue_shards_unreachable")
        .await
        .expect("ingest-api exports eventtracker_queue_shards_unreachable");
    cluster.restart(node);
    let after = node_shard_len(cluster, node, key);
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
    format!(
        "{:>5.1}s cluster node :{port} ({} of {CLUSTER_SHARDS} shards) SIGKILLed for 3 s and restarted (its shards held {before} entries before, {after} after AOF reload; ingest answered {ok}/{} probes 200 while it was down, saw {unreachable} shards unreachable)",
        t.as_secs_f64(),
        on_node[node],
        statuses.len()
    )
}

/// Sends `signal` to each process.
fn signal_all<'a>(procs: impl Iterator<Item = &'a Proc>, signal: &str) {
    for p in procs {
        p.signal(signal);
    }
}

/// PostgreSQL frozen (SIGSTOP) until a flusher's write gives up on `--pg-timeout-ms`, then 2 s
/// more, then thawed. The timeouts are counted in the flushers' logs: no metric tells a timeout
/// from another PostgreSQL error.
async fn freeze_postgres(rig: &Rig, t: Duration) -> String {
    let timeouts = |fs: &[Flusher]| {
        fs.iter()
            .map(|f| f.proc.log_text().matches("--pg-timeout-ms").count())
            .sum::<usize>()
    };
    let before = timeouts(&rig.flushers);
    rig.pg.freeze();
    let frozen_at = Instant::now();
    while timeouts(&rig.flushers) == before {
        assert!(
            frozen_at.elapsed() < Duration::from_secs(30),
            "no flusher timed out while PostgreSQL was frozen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.pg.thaw();
    format!(
        "{:>5.1}s PostgreSQL frozen (SIGSTOP) for {:.1} s; flusher writes timed out {} times",
        t.as_secs_f64(),
        frozen_at.elapsed().as_secs_f64(),
        timeouts(&rig.flushers) - before
    )
}

/// One event; the status, and whether a 503 came with Retry-After.
async fn probe(ingest: &Ingest) -> u16 {
    let res = ingest.send(&json!([event("probe", 0)])).await;
    let status = res.status().as_u16();
    let retry_after = res.headers().contains_key("retry-after");
    assert!(status != 503 || retry_after, "a 503 without Retry-After");
    status
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

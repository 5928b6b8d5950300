//! What a test looks at: bounded waits ([`wait_for`]), `/metrics` counters and gauges, and the
//! queue's state in Redis (stream length, pending entries, consumers, memory).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;

/// How long a test waits for something that should happen soon (a drain, a recovery): long
/// enough for a loaded CI machine, so it only fires when something is really stuck.
pub const LONG: Duration = Duration::from_secs(90);

/// The text of a `/metrics` endpoint.
pub async fn scrape(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis connection for checks.
///
/// With generous timeouts (the client's defaults are about a second): the checks run beside
/// servers doing `appendfsync always` on a loaded machine, where one fsync can stall Redis that
/// long, and a check must not fail for it.
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(15)))
        .set_response_timeout(Some(Duration::from_secs(15)));
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection")
}

/// A Redis Cluster connection (comma-separated seed URLs), for checks.
pub async fn cluster_conn(urls: &str) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>())
        .expect("cluster seeds")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

/// The stream key of shard `n` of a sharded queue (the documented layout: a hash tag per shard).
pub fn shard_key(base: &str, n: usize) -> String {
    format!("{base}:{{{n}}}")
}

/// Entries, pending entries and dead letters of all shards of a sharded queue together.
pub async fn shard_totals(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    base: &str,
    shards: usize,
    group: &str,
) -> (u64, u64, u64) {
    let (mut len, mut pend, mut dead) = (0, 0, 0);
    for n in 0..shards {
        let key = shard_key(base, n);
        len += xlen(conn, &key).await;
        pend += pending(conn, &key, group).await;
        dead += xlen(conn, &format!("{key}:dead")).await;
    }
    (len, pend, dead)
}

/// Waits until every shard of a sharded queue is empty, nothing is pending and no dead letter
/// is left.
pub async fn wait_shards_drained(
    conn: &(impl redis::aio::ConnectionLike + Clone + Send),
    base: &str,
    shards: usize,
) {
    wait_for(
        &format!("the {shards} shards of {base} to drain"),
        LONG,
        || {
            let mut c = conn.clone();
            async move {
                (shard_totals(&mut c, base, shards, "flushers").await == (0, 0, 0)).then_some(())
            }
        },
    )
    .await;
}

/// XLEN of a stream.
pub async fn xlen(conn: &mut (impl redis::aio::ConnectionLike + Send), key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Waits until the stream is empty (every entry written and deleted, or dead-lettered).
pub async fn wait_stream_empty(conn: &MultiplexedConnection, key: &str) {
    wait_for(&format!("{key} to drain"), LONG, || {
        let mut c = conn.clone();
        async move { (xlen(&mut c, key).await == 0).then_some(()) }
    })
    .await;
}

/// Pending entries of a consumer group: 0 when the stream does not exist; a stream without the
/// group, any other error or reply fails the test, so a renamed group or a lost connection is
/// never read as "nothing pending".
pub async fn pending(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    group: &str,
) -> u64 {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await;
    match reply {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XPENDING {key} {group}: unexpected first item {other:?}"),
        },
        Err(e) if e.code() == Some("NOGROUP") => {
            // No such key, or no such group: only the first means "nothing pending". A stream
            // without the group (a renamed or lost group) fails the check.
            let exists: u64 = redis::cmd("EXISTS")
                .arg(key)
                .query_async(conn)
                .await
                .expect("EXISTS");
            assert_eq!(exists, 0, "{key} exists but has no group {group}: {e}");
            0
        }
        other => panic!("XPENDING {key} {group}: {other:?}"),
    }
}

/// Pending entries per consumer of a group (`XPENDING key group` summary), by name; empty when
/// nothing is pending. Fails the test on any error, NOGROUP included.
pub async fn pending_by_consumer(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    group: &str,
) -> Vec<(String, u64)> {
    pending_once_grouped(conn, key, group)
        .await
        .unwrap_or_else(|| panic!("XPENDING {key} {group}: no such group"))
}

/// [`pending_by_consumer`] while waiting for a flusher that may not have created its group
/// yet (it does so after its probes answer): `None` on NOGROUP, any other error fails the test.
pub async fn pending_once_grouped(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    group: &str,
) -> Option<Vec<(String, u64)>> {
    type Summary = (
        u64,
        redis::Value,
        redis::Value,
        Option<Vec<(String, String)>>,
    );
    let (_, _, _, consumers): Summary = match redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await
    {
        Ok(summary) => summary,
        Err(e) if e.code() == Some("NOGROUP") => return None,
        Err(e) => panic!("XPENDING {key} {group}: {e}"),
    };
    Some(
        consumers
            .unwrap_or_default()
            .into_iter()
            .map(|(name, n)| (name, n.parse().expect("a pending count")))
            .collect(),
    )
}

/// The consumers of a group (`XINFO CONSUMERS`) with their pending counts; fails the test on
/// any error.
pub async fn consumers(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    key: &str,
    group: &str,
) -> Vec<(String, u64)> {
    let infos: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("XINFO CONSUMERS {key} {group}: {e}"));
    infos
        .into_iter()
        .map(|info| {
            let name = redis::from_redis_value(info["name"].clone()).expect("consumer name");
            let pending = redis::from_redis_value(info["pending"].clone()).expect("pending count");
            (name, pending)
        })
        .collect()
}

/// The sum of `eventtracker_flusher_events_written_total` over running flushers' /metrics:
/// what the pipeline says it wrote, to compare with ingest's `accepted` and the rows.
pub async fn written_by(flushers: &[&Flusher]) -> f64 {
    let mut sum = 0.0;
    for f in flushers {
        sum += metric(
            &f.metrics_url(),
            "eventtracker_flusher_events_written_total",
        )
        .await
        .expect("the flusher exports eventtracker_flusher_events_written_total");
    }
    sum
}

/// Batches a flusher wrote through the de-duplication path (`batches_written_total{path="dedup"}`).
pub async fn dedup_batches(flusher: &Flusher) -> f64 {
    let page = scrape(&flusher.metrics_url()).await;
    labelled_in(
        &page,
        "eventtracker_flusher_batches_written_total",
        "path=\"dedup\"",
    )
    .expect("the flusher exports batches_written_total{path=\"dedup\"}")
}

/// Batches a flusher wrote, by any path (`batches_written_total`: copy, dedup, guarded).
pub async fn batches_written(flusher: &Flusher) -> f64 {
    let page = scrape(&flusher.metrics_url()).await;
    let path = |p: &str| {
        labelled_in(
            &page,
            "eventtracker_flusher_batches_written_total",
            &format!("path=\"{p}\""),
        )
        .unwrap_or_else(|| panic!("the flusher exports batches_written_total{{path=\"{p}\"}}"))
    };
    path("copy") + path("dedup") + path("guarded")
}

/// Entries a flusher moved to the dead-letter stream (`dead_lettered_total`).
pub async fn dead_lettered_by(flusher: &Flusher) -> f64 {
    flusher_count(flusher, "dead_lettered").await
}

/// The counter `eventtracker_flusher_{name}_total` of a running flusher (`postgres_errors`,
/// `redis_errors`, `claimed`…), summed over its labels (`postgres_errors` has a `class`); fails
/// the test when the flusher does not export it.
pub async fn flusher_count(flusher: &Flusher, name: &str) -> f64 {
    let full = format!("eventtracker_flusher_{name}_total");
    metric_sum_in(&scrape(&flusher.metrics_url()).await, &full)
        .unwrap_or_else(|| panic!("the flusher exports {full}"))
}

/// `eventtracker_ingest_events_accepted_total` of a running ingest-api (required).
pub async fn accepted_by(ingest: &Ingest) -> f64 {
    metric(&ingest.url, "eventtracker_ingest_events_accepted_total")
        .await
        .expect("ingest-api exports eventtracker_ingest_events_accepted_total")
}

/// A gauge or counter from a /metrics page: the first sample of `name` (any labels), or `None`
/// when the page has none (a test that needs the metric must not read its absence as 0).
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    metric_in(&scrape(base).await, name)
}

/// The same, from an already scraped page.
pub fn metric_in(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of `name` (any labels), or `None` when the page has none.
pub fn metric_sum_in(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// A sample with exactly these labels (`source="a",outcome="b"`), or `None`.
pub fn labelled_in(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `redis-cli -p PORT ARGS…` and returns its output (trimmed).
pub fn redis_cli_out(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A field of `INFO memory` (`used_memory`, `maxmemory`).
pub fn redis_memory(port: u16, field: &str) -> u64 {
    redis_cli_out(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO memory has no {field}"))
}

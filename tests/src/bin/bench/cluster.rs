//! The cluster rows, after all the others: a private 3-master Redis Cluster (lib.sh's
//! start_redis_cluster, then appendfsync everysec on each node), the queue in 8 shards.

use crate::config::Config;
use crate::flush::{drain_cmd, fill, finish_drain, start_flushers};
use crate::ingest::{run_ingest, start_ingest};
use crate::output::{DrainOut, FillOut};
use crate::procs;
use crate::report::Report;
use crate::{Result, bail, services};

pub const SHARDS: usize = 8;

/// XLEN of each shard of `key` (redis-cli -c follows the redirect to the shard's master).
fn shard_lens(cfg: &Config, key: &str) -> Result<Vec<u64>> {
    let port = cfg.cluster_ports()[0];
    (0..SHARDS)
        .map(|n| {
            let v = services::rcli(port, &["-c", "XLEN", &format!("{key}:{{{n}}}")])?;
            Ok(v.parse()?)
        })
        .collect()
}

/// FLUSHALL on every node (streams, groups, shard-count keys), then their AOFs rewritten.
fn cluster_reset(cfg: &Config) -> Result<()> {
    for p in cfg.cluster_ports() {
        services::rcli(p, &["FLUSHALL"])?;
    }
    services::aof_rewrite(&cfg.cluster_ports())
}

fn start_cluster(cfg: &Config) -> Result<()> {
    services::lib_sh(
        cfg,
        "start_redis_cluster",
        &[cfg.cluster_name(), cfg.cluster_port.to_string()],
    )?;
    for p in cfg.cluster_ports() {
        services::rcli(p, &["CONFIG", "SET", "appendfsync", "everysec"])?;
        let v = services::rcli(p, &["CONFIG", "GET", "appendfsync"])?;
        if !v.ends_with("everysec") {
            bail!("cluster node :{p}: appendfsync is not everysec ({v:?})");
        }
    }
    let [a, _, c] = cfg.cluster_ports();
    cfg.say(&format!(
        "redis cluster :{a}-{c} (3 masters, AOF, appendfsync everysec), queue in {SHARDS} shards"
    ));
    Ok(())
}

/// Which master holds how many shards of `key` (the hash tags' slots decide).
fn shards_per_master(cfg: &Config, key: &str) -> Result<String> {
    let mut counts = Vec::new();
    for p in cfg.cluster_ports() {
        let keys = services::rcli(p, &["--scan", "--pattern", &format!("{key}:{{?}}")])?;
        counts.push(keys.lines().filter(|l| !l.is_empty()).count().to_string());
    }
    Ok(counts.join("/"))
}

fn cluster_ingest(cfg: &Config, rep: &mut Report) -> Result<()> {
    let key = "bench:cluster-ingest";
    let args = [
        "--redis-cluster".to_string(),
        "--redis-url".into(),
        cfg.cluster_urls(),
    ]
    .into_iter()
    .chain([
        "--shards".to_string(),
        SHARDS.to_string(),
        "--stream-key".into(),
        key.into(),
    ])
    .collect::<Vec<_>>();
    let api = start_ingest(cfg, "ingest-api-cluster", &args)?;
    let out = run_ingest(cfg, &api, "cluster-ingest")?;
    let peak = api.stop()?;
    let lens = shard_lens(cfg, key)?;
    if lens.iter().sum::<u64>() != out.events {
        bail!(
            "cluster ingest: the shards hold {lens:?} entries, not the {} accepted events",
            out.events
        );
    }
    let per_master = shards_per_master(cfg, key)?;
    cfg.say(&format!(
        "cluster ingest: {} events/s, p50 {} ms, p99 {} ms, {} errors; entries per shard {lens:?}; shards per master {per_master}; peak RSS {peak:.1} MiB",
        out.events_per_sec, out.p50_ms, out.p99_ms, out.errors
    ));
    cluster_reset(cfg)?;
    rep.add_cluster_ingest(out, lens, per_master, peak);
    Ok(())
}

/// `flush_n` entries spread over the shards, drained by `count` flushers on default flags.
fn cluster_flush(cfg: &Config, rep: &mut Report, count: usize) -> Result<(FillOut, DrainOut)> {
    let key = format!("bench:cluster-flush-{count}");
    services::pg_reset(cfg)?;
    let queue: Vec<String> = [
        "--redis-cluster",
        "--redis-url",
        &cfg.cluster_urls(),
        "--shards",
        &SHARDS.to_string(),
    ]
    .into_iter()
    .chain(["--stream-key", &key])
    .map(str::to_string)
    .collect();
    let fill = fill(cfg, &queue, &format!("cluster-{count}"))?;
    let n: u64 = shard_lens(cfg, &key)?.iter().sum();
    if n != cfg.flush_n {
        bail!(
            "cluster fill: the shards of {key} hold {n} entries, not {}",
            cfg.flush_n
        );
    }
    services::aof_rewrite(&cfg.cluster_ports())?;
    let extra = [
        "--redis-cluster".to_string(),
        "--shards".into(),
        SHARDS.to_string(),
    ];
    let f = start_flushers(
        cfg,
        count,
        &format!("cluster-{count}"),
        &key,
        &cfg.cluster_urls(),
        &extra,
    )?;
    let out = cfg.file(&format!("drain-cluster-{count}.json"));
    let cmd = drain_cmd(cfg, &f, &queue, cfg.flush_n, cfg.drain_timeout);
    let drain = finish_drain(procs::spawn(
        "loadgen drain",
        cmd,
        &out,
        &out.with_extension("err.log"),
    )?)?;
    f.stop(rep)?;
    services::expect_rows(
        cfg,
        cfg.flush_n,
        &format!("cluster flush, {count} flushers"),
    )?;
    cfg.say(&format!(
        "cluster flush ({count} flusher(s), defaults): {} rows/s",
        drain.rows_per_sec
    ));
    cluster_reset(cfg)?;
    Ok((fill, drain))
}

pub fn cluster_rows(cfg: &Config, rep: &mut Report) -> Result<()> {
    start_cluster(cfg)?;
    cluster_ingest(cfg, rep)?;
    let mut runs = Vec::new();
    for count in 1..=3 {
        runs.push(cluster_flush(cfg, rep, count)?);
    }
    services::pg_reset(cfg)?;
    rep.add_cluster_flush(runs);
    Ok(())
}

//! The flush rows: entries pre-filled with `loadgen fill`, drained by 1 or 2 flushers
//! (`loadgen drain`), with the raw one-COPY loads interleaved between them.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::cpu::{self, PerRow};
use crate::output::{DrainOut, FillOut};
use crate::procs::{self, Spawned};
use crate::report::Report;
use crate::{Result, bail, raw, services};

/// Running flushers.
pub struct Flushers {
    pub procs: Vec<Spawned>,
    /// When they were spawned, ms since the Unix epoch (the drain clock's start).
    pub spawned_at_ms: u128,
}

/// Starts `count` flushers (RUST_LOG=info) on `key`; `extra`: flags beyond the connection ones.
pub fn start_flushers(
    cfg: &Config,
    count: usize,
    tag: &str,
    key: &str,
    redis_url: &str,
    extra: &[String],
) -> Result<Flushers> {
    let spawned_at_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let mut list = Vec::with_capacity(count);
    for i in 1..=count {
        let mut cmd = Command::new(cfg.exe("flusher"));
        cmd.env("RUST_LOG", "info")
            .args([
                "--redis-url",
                redis_url,
                "--database-url",
                &cfg.db_url(),
                "--stream-key",
                key,
            ])
            .args([
                "--consumer",
                &format!("{tag}-{i}"),
                "--metrics-bind",
                "127.0.0.1:0",
            ])
            .args(extra);
        let log = cfg.file(&format!("flusher-{tag}-{i}.log"));
        list.push(procs::spawn(
            &format!("flusher {tag}-{i}"),
            cmd,
            &log,
            &log,
        )?);
    }
    Ok(Flushers {
        procs: list,
        spawned_at_ms,
    })
}

impl Flushers {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Spawned::pid).collect()
    }

    pub fn logs(&self) -> Vec<PathBuf> {
        self.procs.iter().map(|p| p.log.clone()).collect()
    }

    /// Whether every flusher has logged `ready in N ms`.
    pub fn all_ready(&self) -> bool {
        self.procs
            .iter()
            .all(|p| std::fs::read_to_string(&p.log).is_ok_and(|t| t.contains(": ready in ")))
    }

    /// Records their peak RSS, then SIGTERM and wait (each must exit 0).
    pub fn stop(mut self, rep: &mut Report) -> Result<()> {
        for p in &self.procs {
            rep.flusher_peak_mib = rep.flusher_peak_mib.max(procs::peak_rss_mib(p.pid())?);
        }
        for p in &mut self.procs {
            p.terminate()?;
        }
        Ok(())
    }
}

/// `loadgen drain` for `flushers`: started now, clock from their spawn minus their start-up.
pub fn drain_cmd(
    cfg: &Config,
    f: &Flushers,
    queue: &[String],
    events: u64,
    timeout: f64,
) -> Command {
    let mut cmd = Command::new(cfg.exe("loadgen"));
    let join = |v: Vec<String>| v.join(",");
    cmd.arg("drain")
        .args(queue)
        .args([
            "--events",
            &events.to_string(),
            "--timeout-secs",
            &timeout.to_string(),
        ])
        .args(["--spawned-at-unix-ms", &f.spawned_at_ms.to_string()])
        .args([
            "--watch-pids",
            &join(f.pids().iter().map(u32::to_string).collect()),
        ])
        .args([
            "--flusher-logs",
            &join(f.logs().iter().map(|p| p.display().to_string()).collect()),
        ]);
    cmd
}

/// Waits for `loadgen drain`; samples the CPU of flushers, PostgreSQL and Redis when all
/// flushers are ready (the drain clock's start, within a few ms) and when the queue is empty.
pub fn drain_with_cpu(
    cfg: &Config,
    f: &Flushers,
    mut drain: Spawned,
) -> Result<(DrainOut, PerRow)> {
    let pids = f.pids();
    let mut start = None;
    while drain.child.try_wait()?.is_none() {
        if start.is_none() && f.all_ready() {
            start = Some(cpu::sample(cfg, &pids)?);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let end = cpu::sample(cfg, &pids)?;
    let out = finish_drain(drain)?;
    let Some(start) = start else {
        bail!("the queue was empty before every flusher logged 'ready in N ms'");
    };
    Ok((out.clone(), cpu::per_row(&start, &end, out.events)))
}

/// Waits for `loadgen drain` and parses its result.
pub fn finish_drain(mut drain: Spawned) -> Result<DrainOut> {
    let status = drain.wait()?;
    if !status.success() {
        bail!(
            "loadgen drain failed ({status}):\n{}",
            procs::tail(&drain.log, 20)
        );
    }
    let text = std::fs::read_to_string(&drain.out)?;
    Ok(serde_json::from_str(text.trim())?)
}

/// One flush measurement on the single Redis.
pub struct Spec {
    pub key: &'static str,
    pub label: String,
    pub flushers: usize,
    pub args: Vec<String>,
}

pub struct Outcome {
    pub drain: DrainOut,
    pub fill: FillOut,
    pub cpu: PerRow,
}

/// `loadgen fill` of `flush_n` entries into the queue `queue` names (its flags), its JSON kept
/// as `fill-<tag>.json`.
pub fn fill(cfg: &Config, queue: &[String], tag: &str) -> Result<FillOut> {
    let mut fill = Command::new(cfg.exe("loadgen"));
    fill.arg("fill")
        .args(queue)
        .args(["--events", &cfg.flush_n.to_string()]);
    procs::run_json("loadgen fill", fill, &cfg.file(&format!("fill-{tag}.json")))
}

/// Fills `flush_n` entries, drains them with the flushers of `spec`, checks count(*).
pub fn flush_run(cfg: &Config, rep: &mut Report, spec: &Spec) -> Result<Outcome> {
    let key = format!("bench:flush-{}", spec.key);
    services::pg_reset(cfg)?;
    let queue = vec![
        "--redis-url".to_string(),
        cfg.redis_url(),
        "--stream-key".into(),
        key.clone(),
    ];
    let fill = fill(cfg, &queue, spec.key)?;
    if services::xlen(cfg.redis_port, &key)? != cfg.flush_n {
        bail!("fill: {key} does not hold {} entries", cfg.flush_n);
    }
    services::redis_reset(cfg, &[])?;
    let f = start_flushers(
        cfg,
        spec.flushers,
        spec.key,
        &key,
        &cfg.redis_url(),
        &spec.args,
    )?;
    let out = cfg.file(&format!("drain-{}.json", spec.key));
    let cmd = drain_cmd(cfg, &f, &queue, cfg.flush_n, cfg.drain_timeout);
    let drain = procs::spawn("loadgen drain", cmd, &out, &out.with_extension("err.log"))?;
    let (drain, cpu) = drain_with_cpu(cfg, &f, drain)?;
    f.stop(rep)?;
    services::expect_rows(cfg, cfg.flush_n, &format!("flush {}", spec.key))?;
    cfg.say(&format!(
        "{}: {} rows/s (start-up {} ms subtracted); CPU per row: flusher {:.2} µs, postgres {:.2} µs, redis {:.2} µs",
        spec.label, drain.rows_per_sec, drain.ready_ms, cpu.flusher_us, cpu.postgres_us, cpu.redis_us
    ));
    services::redis_reset(cfg, &[&key])?;
    Ok(Outcome { drain, fill, cpu })
}

fn spec(key: &'static str, label: &str, flushers: usize, args: &[String]) -> Spec {
    Spec {
        key,
        label: label.to_string(),
        flushers,
        args: args.to_vec(),
    }
}

/// The flush rows on default flags and the reference variants, with the three raw one-COPY
/// loads interleaved (after the 1-flusher, the 2-flusher and the 1-flusher cN rows), then the
/// raw COPY in 100- and 1000-row transactions.
///
/// A warm-up drain, not recorded, comes first: the first write load on a fresh cluster pays
/// for creating its WAL segments (later ones recycle them), and the first measured row came
/// out 13–25 % below the identical `--concurrency 4` row measured later in three runs.
pub fn flush_rows(cfg: &Config, rep: &mut Report) -> Result<()> {
    let c = cfg.conc.to_string();
    let conc = ["--concurrency".to_string(), c.clone()];
    flush_run(
        cfg,
        rep,
        &spec(
            "warm-up",
            "warm-up, not recorded: 1 flusher, defaults",
            1,
            &[],
        ),
    )?;
    let one = flush_run(cfg, rep, &spec("1", "flush: 1 flusher, defaults", 1, &[]))?;
    let rows = raw::export_rows(cfg)?;
    let mut loads = vec![raw::raw_copy_once(cfg, &rows)?];
    let two = flush_run(cfg, rep, &spec("2", "flush: 2 flushers, defaults", 2, &[]))?;
    loads.push(raw::raw_copy_once(cfg, &rows)?);
    let one_c = flush_run(
        cfg,
        rep,
        &spec(
            "1c",
            &format!("ref: flush, 1 flusher, --concurrency {c}"),
            1,
            &conc,
        ),
    )?;
    loads.push(raw::raw_copy_once(cfg, &rows)?);
    let two_c = flush_run(
        cfg,
        rep,
        &spec(
            "2c",
            &format!("ref: flush, 2 flushers, --concurrency {c}"),
            2,
            &conc,
        ),
    )?;
    let b1000 = ["--batch-size".to_string(), "1000".to_string()];
    let one_b = flush_run(
        cfg,
        rep,
        &spec(
            "1b1000",
            "ref: flush, 1 flusher, --batch-size 1000",
            1,
            &b1000,
        ),
    )?;
    let copy_100 = raw::copy_batches(cfg, &rows, 100)?;
    let copy_1000 = raw::copy_batches(cfg, &rows, 1000)?;
    let _ = std::fs::remove_file(&rows);
    services::pg_reset(cfg)?;
    rep.add_flush(
        cfg,
        [&one, &two, &one_c, &two_c, &one_b],
        &loads,
        [copy_100, copy_1000],
    );
    Ok(())
}

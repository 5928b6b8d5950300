//! The raw limits: redis-benchmark's pipelined XADD of a real entry, psql's one-transaction
//! binary COPY, and `loadgen copy` in 100/1000-row transactions.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::Config;
use crate::output::CopyOut;
use crate::report::Report;
use crate::{Context, Result, bail, procs, services};

/// `redis-benchmark -P 16 -c 50` of `XADD bench:raw * v 1 e <a real entry>` (`loadgen entry`).
pub fn raw_xadd(cfg: &Config, rep: &mut Report) -> Result<()> {
    let out = Command::new(cfg.exe("loadgen"))
        .arg("entry")
        .output()
        .context(|| "loadgen entry".to_string())?;
    let payload = String::from_utf8(out.stdout)?;
    if !out.status.success() || payload.is_empty() {
        bail!(
            "loadgen entry failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &cfg.redis_port.to_string(),
        "-n",
        &cfg.redis_n.to_string(),
    ])
    .args([
        "-P",
        "16",
        "-c",
        "50",
        "-q",
        "XADD",
        "bench:raw",
        "*",
        "v",
        "1",
        "e",
        &payload,
    ]);
    let file = cfg.file("redis-benchmark.out");
    procs::run("redis-benchmark", cmd, &file)?;
    let text = std::fs::read_to_string(&file)?.replace('\r', "\n");
    let rate: f64 = text
        .lines()
        .filter_map(|l| {
            l.split(" requests per second")
                .next()
                .filter(|_| l.contains("requests per second"))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .next_back()
        .context(|| format!("redis-benchmark printed no rate: {text:?}"))?;
    if services::xlen(cfg.redis_port, "bench:raw")? != cfg.redis_n {
        bail!(
            "redis-benchmark: bench:raw does not hold {} entries",
            cfg.redis_n
        );
    }
    cfg.say(&format!(
        "raw Redis XADD -P 16: {rate} events/s ({}-byte entries)",
        payload.len()
    ));
    services::redis_reset(cfg, &["bench:raw"])?;
    rep.raw_xadd(rate, payload.len());
    Ok(())
}

/// The rows the first flush run wrote, as a binary COPY file.
pub fn export_rows(cfg: &Config) -> Result<PathBuf> {
    let path = cfg.file("rows.copy");
    let mut cmd = services::psql_cmd(cfg, "bench");
    cmd.args([
        "-c",
        "COPY (SELECT * FROM events) TO STDOUT (FORMAT binary)",
    ]);
    procs::run("psql COPY TO", cmd, &path)?;
    Ok(path)
}

/// One raw load: psql `COPY events FROM STDIN (FORMAT binary)` of the rows file, one
/// transaction, timed around psql; into an emptied table. Returns rows/s.
pub fn raw_copy_once(cfg: &Config, rows: &Path) -> Result<f64> {
    services::pg_reset(cfg)?;
    let mut cmd = services::psql_cmd(cfg, "bench");
    cmd.args(["-c", "COPY events FROM STDIN (FORMAT binary)"])
        .stdin(Stdio::from(File::open(rows)?));
    let t0 = Instant::now();
    let out = cmd
        .output()
        .context(|| "running psql COPY FROM".to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "psql COPY FROM failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    services::expect_rows(cfg, cfg.flush_n, "raw COPY")?;
    let rate = (cfg.flush_n as f64 / secs * 10.0).round() / 10.0;
    let size = std::fs::metadata(rows)?.len();
    cfg.say(&format!(
        "raw PostgreSQL binary COPY, one transaction: {rate} rows/s ({} bytes a row)",
        size / cfg.flush_n.max(1)
    ));
    services::pg_reset(cfg)?;
    Ok(rate)
}

/// `loadgen copy` of the rows file in transactions of `batch` rows over one connection.
pub fn copy_batches(cfg: &Config, rows: &Path, batch: usize) -> Result<CopyOut> {
    services::pg_reset(cfg)?;
    let mut cmd = Command::new(cfg.exe("loadgen"));
    cmd.arg("copy")
        .args([
            "--database-url",
            &cfg.db_url(),
            "--batch",
            &batch.to_string(),
        ])
        .arg("--file")
        .arg(rows);
    let out: CopyOut = procs::run_json(
        "loadgen copy",
        cmd,
        &cfg.file(&format!("copy-{batch}.json")),
    )?;
    services::expect_rows(
        cfg,
        cfg.flush_n,
        &format!("raw COPY in {batch}-row transactions"),
    )?;
    cfg.say(&format!(
        "raw PostgreSQL binary COPY in {batch}-row transactions: {} rows/s",
        out.rows_per_sec
    ));
    Ok(out)
}

//! End to end: ingest-api and 2 flushers on default flags, `loadgen e2e` paced at a share of
//! the raw one-COPY median, and a light load of 1,000 events/s.

use std::process::Command;

use crate::config::Config;
use crate::flush::{drain_cmd, finish_drain, start_flushers};
use crate::ingest::{IngestApi, TOKEN};
use crate::output::E2eOut;
use crate::procs;
use crate::report::Report;
use crate::{Result, services};

/// The shares of the raw one-COPY median rate the paced rows ask for, %.
pub const SHARES: [u32; 3] = [25, 35, 50];
/// The light load, events/s.
pub const LIGHT_RATE: f64 = 1000.0;

/// One end-to-end run at `rate` events/s for `e2e_secs`; then waits for the flushers to empty
/// the stream and checks that every accepted event is stored once.
pub fn e2e_run(
    cfg: &Config,
    rep: &mut Report,
    api: &IngestApi,
    tag: &str,
    rate: f64,
) -> Result<E2eOut> {
    services::pg_reset(cfg)?;
    let key = "bench:ingest";
    let f = start_flushers(
        cfg,
        cfg.e2e_flushers,
        &format!("e2e-{tag}"),
        key,
        &cfg.redis_url(),
        &[],
    )?;
    let mut cmd = Command::new(cfg.exe("loadgen"));
    cmd.arg("e2e")
        .args([
            "--url",
            &api.addr,
            "--token",
            TOKEN,
            "--database-url",
            &cfg.db_url(),
        ])
        .args([
            "--connections",
            "32",
            "--batch",
            "100",
            "--seconds",
            &cfg.e2e_secs.to_string(),
        ])
        .args([
            "--rate",
            &format!("{rate:.0}"),
            "--wait-secs",
            &cfg.e2e_wait.to_string(),
        ])
        .args(["--redis-url", &cfg.redis_url(), "--stream-key", key]);
    let out: E2eOut = procs::run_json("loadgen e2e", cmd, &cfg.file(&format!("e2e-{tag}.json")))?;
    let queue = vec![
        "--redis-url".to_string(),
        cfg.redis_url(),
        "--stream-key".into(),
        key.into(),
    ];
    let file = cfg.file(&format!("e2e-{tag}-drain.json"));
    let drain = drain_cmd(cfg, &f, &queue, 0, cfg.e2e_wait);
    finish_drain(procs::spawn(
        "loadgen drain",
        drain,
        &file,
        &file.with_extension("err.log"),
    )?)?;
    f.stop(rep)?;
    services::expect_rows(cfg, out.ingest.events, &format!("end to end ({tag})"))?;
    if out.unseen > 0 {
        // Recorded in the JSON; the latencies then leave those batches out.
        cfg.say(&format!(
            "WARNING: end to end ({tag}): {} tracked batches not visible within the wait",
            out.unseen
        ));
    }
    cfg.say(&format!(
        "end to end ({tag}) asked {rate:.0}/s, got {} events/s: p50 {} ms, p99 {} ms, backlog at the end {} entries ({} batches tracked)",
        out.ingest.events_per_sec, out.e2e_p50_ms, out.e2e_p99_ms, out.backlog.unwrap_or(0), out.tracked
    ));
    services::redis_reset(cfg, &[key])?;
    Ok(out)
}

/// The light row, then 25 %, 35 % and 50 % of the raw one-COPY median; stops ingest-api.
pub fn e2e_rows(cfg: &Config, rep: &mut Report, api: IngestApi) -> Result<()> {
    let light = e2e_run(cfg, rep, &api, "light", LIGHT_RATE)?;
    let median = rep.raw_copy_median;
    let mut paced = Vec::new();
    for share in SHARES {
        let rate = median * f64::from(share) / 100.0;
        paced.push((
            share,
            e2e_run(cfg, rep, &api, &format!("{share}pct"), rate)?,
        ));
    }
    services::pg_reset(cfg)?;
    let peak = api.stop()?;
    rep.add_e2e(cfg, light, paced, peak);
    Ok(())
}

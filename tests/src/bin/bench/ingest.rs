//! ingest-api under `loadgen ingest`: 32 connections × 100-event batches, no flusher.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::output::IngestOut;
use crate::procs::{self, Spawned};
use crate::report::Report;
use crate::{Result, bail, services};

pub const TOKEN: &str = "bench-token";

/// A running ingest-api and the address it printed.
pub struct IngestApi {
    pub proc: Spawned,
    pub addr: String,
}

impl IngestApi {
    /// Peak RSS (MiB), then SIGTERM and wait.
    pub fn stop(mut self) -> Result<f64> {
        let peak = procs::peak_rss_mib(self.proc.pid())?;
        self.proc.terminate()?;
        Ok(peak)
    }
}

/// Starts ingest-api on a free port, queue length limit lifted; `args`: its Redis flags.
pub fn start_ingest(cfg: &Config, tag: &str, args: &[String]) -> Result<IngestApi> {
    let mut cmd = Command::new(cfg.exe("ingest-api"));
    cmd.env("RUST_LOG", "warn")
        .args([
            "--bind",
            "127.0.0.1:0",
            "--tokens",
            &format!("bench={TOKEN}"),
        ])
        .args(["--max-queue-len", "1000000000"])
        .args(args);
    let out = cfg.file(&format!("{tag}.out"));
    let mut proc = procs::spawn(tag, cmd, &out, &cfg.file(&format!("{tag}.log")))?;
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(i) = text.find("http://") {
            let addr: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || ":/.".contains(*c))
                .collect();
            return Ok(IngestApi { proc, addr });
        }
        if proc.child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(10) {
            bail!(
                "{tag} did not print its address:\n{}",
                procs::tail(&proc.log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `loadgen ingest` against `api` for `ingest_secs`.
pub fn run_ingest(cfg: &Config, api: &IngestApi, tag: &str) -> Result<IngestOut> {
    let mut cmd = Command::new(cfg.exe("loadgen"));
    cmd.arg("ingest")
        .args([
            "--url",
            &api.addr,
            "--token",
            TOKEN,
            "--connections",
            "32",
            "--batch",
            "100",
        ])
        .args(["--seconds", &cfg.ingest_secs.to_string()]);
    procs::run_json("loadgen ingest", cmd, &cfg.file(&format!("{tag}.json")))
}

/// The ingest row on the single Redis; ingest-api stays up for the end-to-end rows.
pub fn ingest_row(cfg: &Config, rep: &mut Report) -> Result<IngestApi> {
    let args = [
        "--redis-url".to_string(),
        cfg.redis_url(),
        "--stream-key".into(),
        "bench:ingest".into(),
    ];
    let api = start_ingest(cfg, "ingest-api", &args)?;
    let out = run_ingest(cfg, &api, "ingest")?;
    let queued = services::xlen(cfg.redis_port, "bench:ingest")?;
    if queued != out.events {
        bail!(
            "ingest: the stream holds {queued} entries, not the {} accepted events",
            out.events
        );
    }
    cfg.say(&format!(
        "ingest: {} events/s, p50 {} ms, p99 {} ms, {} errors",
        out.events_per_sec, out.p50_ms, out.p99_ms, out.errors
    ));
    services::redis_reset(cfg, &["bench:ingest"])?;
    rep.add_ingest(out);
    Ok(api)
}

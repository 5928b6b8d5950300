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
        if let Some(i) = text.find("http://").or_else(|| text.find("https://")) {
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
    run_ingest_with(cfg, api, tag, &[])
}

/// The same with more loadgen flags.
fn run_ingest_with(
    cfg: &Config,
    api: &IngestApi,
    tag: &str,
    extra: &[String],
) -> Result<IngestOut> {
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
        .args(["--seconds", &cfg.ingest_secs.to_string()])
        .args(extra);
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

/// The ingest row again over HTTPS (ingest-api's own TLS, `--tls-cert`/`--tls-key`, with a
/// certificate of a CA made here; loadgen verifies it), right after the plain row on the same
/// Redis: its figure as a ratio to the plain one. The connections are opened (handshakes done)
/// before timing, as in the plain row: this is the cost of TLS on a kept-alive connection.
pub fn ingest_https_row(cfg: &Config, rep: &mut Report) -> Result<()> {
    let (ca, cert, key) = (
        cfg.file("tls-ca.crt"),
        cfg.file("tls.crt"),
        cfg.file("tls.key"),
    );
    write_certificates(&ca, &cert, &key)?;
    let args = [
        "--redis-url".to_string(),
        cfg.redis_url(),
        "--stream-key".into(),
        "bench:ingest-https".into(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let api = start_ingest(cfg, "ingest-api-https", &args)?;
    if !api.addr.starts_with("https://") {
        bail!("ingest-api with --tls-cert listens on {}", api.addr);
    }
    let out = run_ingest_with(
        cfg,
        &api,
        "ingest-https",
        &["--ca-file".to_string(), ca.display().to_string()],
    )?;
    api.stop()?;
    let queued = services::xlen(cfg.redis_port, "bench:ingest-https")?;
    if queued != out.events {
        bail!(
            "ingest over HTTPS: the stream holds {queued} entries, not the {} accepted events",
            out.events
        );
    }
    cfg.say(&format!(
        "ingest over HTTPS: {} events/s, p50 {} ms, p99 {} ms, {} errors",
        out.events_per_sec, out.p50_ms, out.p99_ms, out.errors
    ));
    services::redis_reset(cfg, &["bench:ingest-https"])?;
    rep.add_ingest_https(out);
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 signed by it (EC P-256), as PEM files.
fn write_certificates(
    ca_path: &std::path::Path,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "EventTracker bench CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&leaf_key, &issuer)?;
    std::fs::write(ca_path, ca_cert.pem())?;
    std::fs::write(cert_path, leaf.pem())?;
    std::fs::write(key_path, leaf_key.serialize_pem())?;
    Ok(())
}

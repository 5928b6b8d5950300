//! The command line, the environment and what follows from them.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use crate::{Context, Result, bail};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measures EventTracker against the raw limits of its Redis and PostgreSQL (run it through scripts/bench)"
)]
pub struct Cli {
    /// A smoke run of a few seconds with small counts (other ports); figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON (the SVG goes beside it, .svg); default bench/results.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Port of the private Redis (default 36379, quick 21380).
    #[arg(long, env = "ET_BENCH_REDIS_PORT")]
    pub redis_port: Option<u16>,
    /// Port of the private PostgreSQL (default 35432, quick 21432).
    #[arg(long, env = "ET_BENCH_PG_PORT")]
    pub pg_port: Option<u16>,
    /// First of the Redis Cluster's 3 ports (default 21390, quick 21393); each + 10000 is its bus.
    #[arg(long, env = "ET_BENCH_CLUSTER_PORT")]
    pub cluster_port: Option<u16>,
    /// Which binaries to measure: target/release or target/debug.
    #[arg(long, env = "ET_BENCH_PROFILE", value_enum, default_value = "release")]
    pub profile: Profile,
    /// Flushers running during the end-to-end measurements.
    #[arg(long, env = "ET_BENCH_E2E_FLUSHERS", default_value_t = 2)]
    pub e2e_flushers: usize,
    /// --concurrency of the reference flush rows marked cN.
    #[arg(long, env = "ET_BENCH_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds scripts/bench spent building (recorded in the JSON).
    #[arg(long, env = "ET_BENCH_BUILD_SECONDS", default_value_t = 0)]
    pub build_seconds: u64,
    /// The checkout (set by scripts/lib.sh).
    #[arg(long, env = "ET_ROOT")]
    pub root: PathBuf,
    /// Where private services keep their data (set by scripts/lib.sh).
    #[arg(long, env = "ET_DATA")]
    pub data: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

#[derive(Clone)]
pub struct Config {
    pub quick: bool,
    /// Services' names: `.data/redis-<name>`, `.data/pg-<name>`, `.data/redis-<name>-cluster-<port>`.
    pub name: String,
    pub redis_port: u16,
    pub pg_port: u16,
    pub cluster_port: u16,
    pub bin: PathBuf,
    pub root: PathBuf,
    pub data: PathBuf,
    /// Logs and loadgen outputs; removed after a successful run.
    pub work: PathBuf,
    pub out: PathBuf,
    pub profile: Profile,
    pub e2e_flushers: usize,
    pub conc: usize,
    pub build_seconds: u64,
    /// Entries redis-benchmark adds.
    pub redis_n: u64,
    /// Entries of each flush run (and rows of the raw COPY loads).
    pub flush_n: u64,
    pub ingest_secs: f64,
    /// Length of each end-to-end load (the paced and the light one).
    pub e2e_secs: f64,
    pub e2e_wait: f64,
    pub drain_timeout: f64,
    pub started: Instant,
}

impl Config {
    pub fn new(cli: Cli) -> Result<Config> {
        let q = cli.quick;
        let out = match cli.out {
            Some(p) if p.is_absolute() => p,
            Some(p) => std::env::current_dir()?.join(p),
            None => cli.root.join("bench/results.json"),
        };
        if cli.e2e_flushers == 0 || cli.concurrency == 0 {
            bail!("ET_BENCH_E2E_FLUSHERS and ET_BENCH_CONCURRENCY must be positive");
        }
        let dir = match cli.profile {
            Profile::Release => "release",
            Profile::Debug => "debug",
        };
        let work = tempfile::Builder::new()
            .prefix("et-bench.")
            .tempdir()
            .context(|| "creating a work folder".to_string())?
            .keep();
        Ok(Config {
            quick: q,
            name: if q { "bench-quick" } else { "bench" }.to_string(),
            redis_port: cli.redis_port.unwrap_or(if q { 21380 } else { 36379 }),
            pg_port: cli.pg_port.unwrap_or(if q { 21432 } else { 35432 }),
            cluster_port: cli.cluster_port.unwrap_or(if q { 21393 } else { 21390 }),
            bin: cli.root.join("target").join(dir),
            root: cli.root,
            data: cli.data,
            work,
            out,
            profile: cli.profile,
            e2e_flushers: cli.e2e_flushers,
            conc: cli.concurrency,
            build_seconds: cli.build_seconds,
            redis_n: if q { 20_000 } else { 1_000_000 },
            flush_n: if q { 3_000 } else { 200_000 },
            ingest_secs: if q { 1.0 } else { 20.0 },
            e2e_secs: if q { 2.0 } else { 60.0 },
            e2e_wait: if q { 30.0 } else { 120.0 },
            drain_timeout: if q { 60.0 } else { 300.0 },
            started: Instant::now(),
        })
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    pub fn db_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/bench", self.pg_port)
    }

    pub fn cluster_name(&self) -> String {
        format!("{}-cluster", self.name)
    }

    pub fn cluster_ports(&self) -> [u16; 3] {
        let p = self.cluster_port;
        [p, p + 1, p + 2]
    }

    /// The seed list --redis-url takes with --redis-cluster.
    pub fn cluster_urls(&self) -> String {
        let urls: Vec<String> = self
            .cluster_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        urls.join(",")
    }

    pub fn exe(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A file in the work folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Progress on stdout, with the seconds since the start.
    pub fn say(&self, what: &str) {
        println!(
            "bench [{:.0}s]: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn discard_work(&self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

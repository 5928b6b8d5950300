//! The private services: Redis (AOF, appendfsync everysec, noeviction) and PostgreSQL +
//! TimescaleDB started by scripts/lib.sh's start_redis / start_pg / start_redis_cluster, with
//! their data in .data/, removed on exit, failure or Ctrl-C; and the clients the bench talks to
//! them with (psql, redis-cli).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::{Context, Result, bail, procs};

/// Set once the ports were found free: from then on the services on them are ours to stop.
static OWNED: AtomicBool = AtomicBool::new(false);
/// Held while stopping, so that the main thread waits for the signal handler's cleanup.
static STOPPING: Mutex<()> = Mutex::new(());
/// The exit code a signal asked for (0: none).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The exit code of a signal received (130 SIGINT, 143 SIGTERM), if any.
pub fn interrupted() -> Option<u8> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        c => Some(c as u8),
    }
}

/// The PostgreSQL settings recorded (and, the durable ones, checked) before measuring.
pub const PG_SETTINGS: [&str; 8] = [
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "max_wal_size",
    "wal_compression",
    "wal_buffers",
    "shared_buffers",
    "checkpoint_timeout",
];

#[derive(Serialize, Debug, Clone)]
pub struct Settings {
    pub redis_appendfsync: String,
    pub redis_maxmemory_policy: String,
    pub postgres: BTreeMap<String, String>,
    pub timescaledb: String,
}

fn taken(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        || TcpListener::bind(addr).is_err()
}

/// Refuses to start (touching nothing) when a port the bench needs is taken.
pub fn check_ports_free(cfg: &Config) -> Result<()> {
    for (port, what) in [(cfg.redis_port, "Redis"), (cfg.pg_port, "PostgreSQL")] {
        if taken(port) {
            bail!("port {port} ({what}) is taken (a previous bench still running?)");
        }
    }
    for p in cfg.cluster_ports() {
        if taken(p) {
            bail!("port {p} (Redis Cluster node) is taken (a previous bench still running?)");
        }
        if taken(p + 10000) {
            bail!("port {} (cluster bus of :{p}) is taken", p + 10000);
        }
    }
    Ok(())
}

pub fn claim(_cfg: &Config) {
    OWNED.store(true, Ordering::SeqCst);
}

/// Runs a scripts/lib.sh function (`bash -c 'source lib.sh; FN ARGS'`).
pub fn lib_sh(cfg: &Config, func: &str, args: &[String]) -> Result<String> {
    let lib = cfg.root.join("scripts/lib.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$0\" && {func} \"$@\""))
        .arg(&lib)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context(|| format!("running lib.sh's {func}"))?;
    if !out.status.success() {
        bail!(
            "lib.sh's {func} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn data_dirs(cfg: &Config) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![
        cfg.data.join(format!("redis-{}", cfg.name)),
        cfg.data.join(format!("pg-{}", cfg.name)),
    ];
    for p in cfg.cluster_ports() {
        dirs.push(cfg.data.join(format!("redis-{}-{p}", cfg.cluster_name())));
    }
    dirs
}

/// Starts Redis and PostgreSQL, creates the database `bench` with the migrations applied, and
/// checks and returns the settings that matter.
pub fn start(cfg: &Config) -> Result<Settings> {
    for d in data_dirs(cfg) {
        let _ = std::fs::remove_dir_all(d);
    }
    let (name, rp, pp) = (
        cfg.name.clone(),
        cfg.redis_port.to_string(),
        cfg.pg_port.to_string(),
    );
    // lib.sh's start_redis: AOF, noeviction; the extra argument overrides its `appendfsync always`.
    lib_sh(
        cfg,
        "start_redis",
        &[name.clone(), rp, "--appendfsync".into(), "everysec".into()],
    )?;
    lib_sh(cfg, "start_pg", &[name, pp])?;
    psql_db(cfg, "postgres", "CREATE DATABASE bench")?;
    let log = cfg.file("migrate.log");
    let mut cmd = Command::new(cfg.exe("flusher"));
    cmd.args(["migrate", "--database-url", &cfg.db_url()]);
    procs::run("flusher migrate", cmd, &log)?;
    let s = settings(cfg)?;
    cfg.say(&format!(
        "redis :{} (AOF, appendfsync {}), postgres :{} (fsync {}, synchronous_commit {}, full_page_writes {}, timescaledb {})",
        cfg.redis_port, s.redis_appendfsync, cfg.pg_port, s.postgres["fsync"], s.postgres["synchronous_commit"],
        s.postgres["full_page_writes"], s.timescaledb
    ));
    Ok(s)
}

fn settings(cfg: &Config) -> Result<Settings> {
    let mut postgres = BTreeMap::new();
    for name in PG_SETTINGS {
        postgres.insert(name.to_string(), psql(cfg, &format!("SHOW {name}"))?);
    }
    let s = Settings {
        redis_appendfsync: config_get(cfg.redis_port, "appendfsync")?,
        redis_maxmemory_policy: config_get(cfg.redis_port, "maxmemory-policy")?,
        postgres,
        timescaledb: psql(
            cfg,
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
        )?,
    };
    let durable = ["fsync", "synchronous_commit", "full_page_writes"]
        .iter()
        .all(|k| s.postgres[*k] == "on");
    if s.redis_appendfsync != "everysec" || s.redis_maxmemory_policy != "noeviction" || !durable {
        bail!("unexpected durability settings: {s:?}");
    }
    if s.timescaledb.is_empty() {
        bail!("TimescaleDB is not installed in the bench database");
    }
    Ok(s)
}

/// Stops what the bench started and removes its data (best effort; on every exit).
pub fn stop(cfg: &Config) {
    let _guard = STOPPING.lock();
    if !OWNED.swap(false, Ordering::SeqCst) {
        return;
    }
    let (name, rp, pp) = (
        cfg.name.clone(),
        cfg.redis_port.to_string(),
        cfg.pg_port.to_string(),
    );
    let _ = lib_sh(cfg, "stop_redis", &[name.clone(), rp]);
    let _ = lib_sh(cfg, "stop_pg", &[name, pp]);
    let _ = lib_sh(
        cfg,
        "stop_redis_cluster",
        &[cfg.cluster_name(), cfg.cluster_port.to_string()],
    );
    for d in data_dirs(cfg) {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// On SIGINT or SIGTERM: stop the children and the services, keep the logs, exit 130 / 143.
pub fn on_signals(cfg: &Config) {
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let code = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return None;
            };
            tokio::select! {
                _ = int.recv() => Some(130),
                _ = term.recv() => Some(143),
            }
        });
        let Some(code) = code else { return };
        INTERRUPTED.store(code, Ordering::SeqCst);
        eprintln!(
            "bench: interrupted; stopping everything (logs kept in {})",
            cfg.work.display()
        );
        procs::stop_all_children();
        stop(&cfg);
        std::process::exit(code);
    });
}

/// psql on the database `bench`: the unaligned, tuples-only output, trimmed.
pub fn psql(cfg: &Config, sql: &str) -> Result<String> {
    psql_db(cfg, "bench", sql)
}

pub fn psql_cmd(cfg: &Config, db: &str) -> Command {
    let mut cmd = Command::new("/usr/lib/postgresql/15/bin/psql");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &cfg.pg_port.to_string(),
        "-U",
        "postgres",
        "-d",
        db,
    ])
    .args(["-v", "ON_ERROR_STOP=1", "-qtAX"]);
    cmd
}

fn psql_db(cfg: &Config, db: &str, sql: &str) -> Result<String> {
    let out = psql_cmd(cfg, db)
        .args(["-c", sql])
        .output()
        .context(|| "running psql".to_string())?;
    if !out.status.success() {
        bail!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// redis-cli -p PORT ARGS…: its output, trimmed.
pub fn rcli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .context(|| format!("running redis-cli {args:?}"))?;
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn config_get(port: u16, key: &str) -> Result<String> {
    let out = rcli(port, &["CONFIG", "GET", key])?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

pub fn xlen(port: u16, key: &str) -> Result<u64> {
    let n = rcli(port, &["XLEN", key])?;
    n.parse().context(|| format!("XLEN {key}: {n:?}"))
}

pub fn rows_in_db(cfg: &Config) -> Result<u64> {
    let n = psql(cfg, "SELECT count(*) FROM events")?;
    n.parse().context(|| format!("count(*): {n:?}"))
}

pub fn expect_rows(cfg: &Config, n: u64, what: &str) -> Result<()> {
    let rows = rows_in_db(cfg)?;
    if rows != n {
        bail!("{what}: {rows} rows in events, expected {n}");
    }
    Ok(())
}

/// Rewrites the AOF of each Redis and waits for all of them, so that a rewrite triggered by one
/// measurement's data does not run during the next one.
pub fn aof_rewrite(ports: &[u16]) -> Result<()> {
    for p in ports {
        let _ = rcli(*p, &["BGREWRITEAOF"]);
    }
    for p in ports {
        let mut i = 0;
        loop {
            let info = rcli(*p, &["INFO", "persistence"])?;
            if !info.lines().any(|l| {
                l.starts_with("aof_rewrite_in_progress:1")
                    || l.starts_with("aof_rewrite_scheduled:1")
            }) {
                break;
            }
            i += 1;
            if i > 600 {
                bail!("AOF rewrite on :{p} did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Empties Redis (the keys given) and rewrites the AOF.
pub fn redis_reset(cfg: &Config, keys: &[&str]) -> Result<()> {
    if !keys.is_empty() {
        let mut args = vec!["DEL"];
        args.extend_from_slice(keys);
        rcli(cfg.redis_port, &args)?;
    }
    aof_rewrite(&[cfg.redis_port])
}

/// Empties the events table and checkpoints, so each PostgreSQL measurement starts alike.
pub fn pg_reset(cfg: &Config) -> Result<()> {
    psql(cfg, "TRUNCATE events")?;
    psql(cfg, "CHECKPOINT")?;
    Ok(())
}

/// The postmaster's pid (first line of postmaster.pid).
pub fn postmaster_pid(cfg: &Config) -> Result<u32> {
    let path = cfg
        .data
        .join(format!("pg-{}", cfg.name))
        .join("postmaster.pid");
    let text = std::fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default().trim();
    first
        .parse()
        .context(|| format!("{}: {first:?}", path.display()))
}

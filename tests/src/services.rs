//! The services a test stands on: the shared Redis and PostgreSQL `scripts/test` starts, a
//! database of its own per test ([`TestDb`]), and private servers for tests that stop, kill or
//! freeze one ([`RedisServer`], [`PgServer`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::*;

/// The shared test Redis started by `scripts/test`.
pub fn shared_redis_url() -> String {
    std::env::var("ET_TEST_REDIS_URL").expect("ET_TEST_REDIS_URL is set by scripts/test")
}

/// The shared test PostgreSQL (maintenance database) started by `scripts/test`.
pub fn shared_admin_url() -> String {
    std::env::var("ET_TEST_DATABASE_URL").expect("ET_TEST_DATABASE_URL is set by scripts/test")
}

/// Runs `flusher migrate` against a database; returns its exit status and output.
pub fn migrate(database_url: &str) -> (bool, String) {
    let out = Command::new(bin("flusher"))
        .args(["migrate", "--database-url", database_url])
        .env("RUST_LOG", "info")
        .output()
        .expect("flusher migrate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A database of its own for one test, on the shared or a private server; dropped on drop.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// A new empty database (no migrations).
    pub async fn empty(admin_url: &str) -> TestDb {
        let name = unique("et");
        let admin = connect(admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = replace_db(admin_url, &name);
        TestDb {
            url,
            name,
            admin_url: admin_url.to_string(),
        }
    }

    /// A new database with the migrations applied by the real `flusher migrate`.
    pub async fn migrated(admin_url: &str) -> TestDb {
        let db = Self::empty(admin_url).await;
        let (ok, out) = migrate(&db.url);
        assert!(ok, "flusher migrate failed:\n{out}");
        db
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Adds (or drops) a CHECK constraint that makes PostgreSQL refuse rows named `poison`.
    pub async fn set_poison_check(&self, on: bool) {
        let sql = if on {
            "ALTER TABLE events ADD CONSTRAINT no_poison CHECK (name <> 'poison')"
        } else {
            "ALTER TABLE events DROP CONSTRAINT no_poison"
        };
        self.client().await.batch_execute(sql).await.unwrap();
    }

    /// Waits until the table holds at least `n` rows.
    pub async fn wait_rows(&self, n: i64) {
        wait_for(&format!("{n} rows"), LONG, || async {
            (self.count().await >= n).then_some(())
        })
        .await;
    }

    /// (rows, distinct event_ids) in `events`: equal when nothing was stored twice.
    pub async fn rows_and_distinct(&self) -> (i64, i64) {
        let row = self
            .client()
            .await
            .query_one("SELECT count(*), count(DISTINCT event_id) FROM events", &[])
            .await
            .expect("count events");
        (row.get(0), row.get(1))
    }

    pub async fn count(&self) -> i64 {
        self.client()
            .await
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("count")
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Best effort, on a thread of its own: Drop cannot be async.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL ends in /<db>");
    format!("{base}/{db}")
}

/// A connected client (its connection driven on a task).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to postgres: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `redis-server` in the foreground on 127.0.0.1:`port` with its data in `dir`: AOF with
/// `appendfsync always` (an acknowledged write survives a crash), no RDB, `noeviction`, and the
/// `tcp-keepalive` of scripts/conf/redis-network.conf.
pub(crate) fn redis_server(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    // The config file comes first: the server-side keepalive every Redis of the project has.
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/conf/redis-network.conf"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"]);
    cmd
}

/// A private Redis server (AOF on, `appendfsync always`), for tests that stop or freeze it.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
    /// The network namespace it runs in ([`RedisServer::start_in`]).
    netns: Option<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// A server inside `netns`, on its 127.0.0.1 ([`RedisServer::url`], for processes inside)
    /// and on a Unix socket ([`RedisServer::unix_url`], for the test and processes outside).
    pub fn start_in(netns: &Netns) -> RedisServer {
        Self::start_with(Some(netns.name.clone()))
    }

    fn start_with(netns: Option<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            proc: None,
            netns,
        };
        s.launch();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The Unix socket's URL (reachable from outside the server's network namespace).
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn launch(&mut self) {
        let mut cmd = redis_server(self.port, self.dir.path());
        cmd.arg("--unixsocket").arg(self.socket());
        if let Some(ns) = &self.netns {
            cmd = in_netns(ns, &cmd);
        }
        self.proc = Some(Proc::spawn("redis-server", cmd));
        let socket = self.socket();
        let start = Instant::now();
        while Command::new("redis-cli")
            .arg("-s")
            .arg(&socket)
            .arg("ping")
            .output()
            .map(|o| !String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash. AOF with `always` keeps every acknowledged write.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port and data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn freeze(&self) {
        self.proc.as_ref().expect("running").signal("STOP");
    }

    pub fn thaw(&self) {
        self.proc.as_ref().expect("running").signal("CONT");
    }

    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }
}

/// A private PostgreSQL + TimescaleDB cluster, for tests that stop or restart it. Runs as the
/// `postgres` user (initdb and postgres refuse root) in a folder under /tmp that user can reach.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    /// The network namespace it runs in ([`PgServer::start_in`]).
    netns: Option<String>,
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(None)
    }

    /// A server inside `netns`, on its 127.0.0.1 (for processes inside) and on its Unix socket
    /// ([`PgServer::socket_url`], for the test and processes outside).
    pub fn start_in(netns: &Netns) -> PgServer {
        Self::start_with(Some(netns.name.clone()))
    }

    fn start_with(netns: Option<String>) -> PgServer {
        let dir = std::env::temp_dir().join(unique("et-pg"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        run_ok(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let s = PgServer {
            port: free_port(),
            dir,
            netns,
        };
        run_ok(
            as_postgres(&pg_bin("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "-D",
                ])
                .arg(s.data()),
        );
        s.start_server();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The maintenance database over the server's Unix socket.
    pub fn socket_url(&self) -> String {
        let dir = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/postgres", self.port)
    }

    pub fn start_server(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb \
             -c timescaledb.telemetry_level=off -c fsync=off",
            self.port,
            self.dir.display()
        );
        for (name, value) in pg_network_settings() {
            opts.push_str(&format!(" -c {name}={value}"));
        }
        let mut cmd = as_postgres(&pg_bin("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start");
        if let Some(ns) = &self.netns {
            cmd = in_netns(ns, &cmd);
        }
        run_ok(&mut cmd);
    }

    /// `pg_ctl stop -m immediate`: like a crash, connections drop at once.
    pub fn stop(&self) {
        run_ok(
            as_postgres(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"]),
        );
    }

    /// SIGSTOP to the postmaster and every backend: PostgreSQL stops answering without closing
    /// a connection, as a host that froze or a failover without a TCP reset does.
    pub fn freeze(&self) {
        self.signal_all("STOP");
    }

    /// SIGCONT to the same processes.
    pub fn thaw(&self) {
        self.signal_all("CONT");
    }

    fn signal_all(&self, sig: &str) {
        let pidfile =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let postmaster = pidfile.lines().next().expect("a pid").trim().to_string();
        let out = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("pgrep");
        let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        pids.push(postmaster);
        for pid in pids {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid)
                .status();
        }
    }

    /// The server's log, to show that it really went down.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A test that failed with PostgreSQL frozen: thaw it first, or `pg_ctl stop` waits on a
        // stopped postmaster and its processes stay behind.
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid"));
        if let Some(pid) = pidfile.ok().as_deref().and_then(|p| p.lines().next()) {
            let children = Command::new("pgrep").args(["-P", pid.trim()]).output();
            let children = children.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for p in children
                .unwrap_or_default()
                .split_whitespace()
                .chain([pid.trim()])
            {
                let _ = Command::new("kill").args(["-CONT", p]).status();
            }
        }
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long scripts/conf/redis-network.conf lets Redis keep a client that vanished without a
/// word: `tcp-keepalive` N probes after N s of silence, then 3 times N/3 s apart.
pub fn redis_keepalive_window() -> Duration {
    let conf = include_str!("../../scripts/conf/redis-network.conf");
    let secs: u64 = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("tcp-keepalive "))
        .and_then(|v| v.trim().parse().ok())
        .expect("tcp-keepalive in scripts/conf/redis-network.conf");
    Duration::from_secs(2 * secs)
}

/// The server-side TCP settings every PostgreSQL of the project starts with (keepalives, user
/// timeout), from the file scripts/lib.sh reads too.
const PG_NETWORK_CONF: &str = include_str!("../../scripts/conf/postgres-network.conf");

/// The `name = value` settings of scripts/conf/postgres-network.conf.
pub fn pg_network_settings() -> Vec<(String, String)> {
    PG_NETWORK_CONF
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once('=').expect("name = value");
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

/// How long those settings let a backend live after its client vanished without a word: the
/// idle time before the first keepalive probe plus the probes, or the user timeout if longer
/// (a connection with data in flight is not probed).
pub fn pg_keepalive_window() -> Duration {
    let get = |name: &str| -> u64 {
        pg_network_settings()
            .into_iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in scripts/conf/postgres-network.conf"))
    };
    let probes =
        get("tcp_keepalives_idle") + get("tcp_keepalives_interval") * get("tcp_keepalives_count");
    Duration::from_secs(probes).max(Duration::from_millis(get("tcp_user_timeout")))
}

fn pg_bin(name: &str) -> PathBuf {
    Path::new("/usr/lib/postgresql/15/bin").join(name)
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

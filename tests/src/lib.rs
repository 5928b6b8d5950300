//! Test harness: starts the real `ingest-api` and `flusher` binaries against real Redis and real
//! PostgreSQL + TimescaleDB, and gives each test its own stream key and database.
//!
//! `scripts/test` starts the shared services and exports `ET_TEST_REDIS_URL` and
//! `ET_TEST_DATABASE_URL`. Tests that stop, kill or freeze a service start one of their own
//! ([`RedisServer`], [`PgServer`]), so parallel tests never see a shared one vanish; tests of
//! `--redis-cluster` start a private [`RedisCluster`].
//! Silent unless a test fails: then the logs of the processes it started are printed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_postgres::NoTls;

pub use redis::aio::MultiplexedConnection;

/// The shared test Redis started by `scripts/test`.
pub fn shared_redis_url() -> String {
    std::env::var("ET_TEST_REDIS_URL").expect("ET_TEST_REDIS_URL is set by scripts/test")
}

/// The shared test PostgreSQL (maintenance database) started by `scripts/test`.
pub fn shared_admin_url() -> String {
    std::env::var("ET_TEST_DATABASE_URL").expect("ET_TEST_DATABASE_URL is set by scripts/test")
}

/// A name unique to this test run, for stream keys, databases and folders.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Where cargo put the binaries (`target/debug`), found from the test executable's path.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (there is a small window in which another process could take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

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

/// A child process whose output goes to a log file; killed on drop, log printed if the test fails.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stderr(file.try_clone().expect("log file"))
            .stdout(file)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "{} did not exit within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Sends a signal to a process by pid.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// A running ingest-api.
pub struct Ingest {
    pub proc: Proc,
    pub url: String,
}

/// The dev token every test server accepts, and its source name.
pub const TOKEN: &str = "test-token-0123456789";
pub const SOURCE: &str = "test-source";

impl Ingest {
    /// Starts ingest-api on a free port with the test token; `extra` adds flags.
    pub fn start(redis_url: &str, stream_key: &str, extra: &[&str]) -> Ingest {
        let mut cmd = Command::new(bin("ingest-api"));
        cmd.args(["--bind", "127.0.0.1:0", "--redis-url", redis_url])
            .args(["--stream-key", stream_key])
            .args(["--tokens", &format!("{SOURCE}={TOKEN}")])
            .args(["--workers", "2"])
            .args(extra)
            .env("RUST_LOG", "info");
        let proc = Proc::spawn("ingest-api", cmd);
        let url = Self::wait_listening(&proc);
        Ingest { proc, url }
    }

    fn wait_listening(proc: &Proc) -> String {
        let start = Instant::now();
        loop {
            let text = proc.log_text();
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("ingest-api listening on "))
            {
                return line["ingest-api listening on ".len()..].trim().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ingest-api did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POSTs a JSON body to `/v1/events` with the test token.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        post_json(&format!("{}/v1/events", self.url), Some(TOKEN), body).await
    }

    /// The same, returning the whole response (for its headers).
    pub async fn send(&self, body: &Value) -> reqwest::Response {
        json_request(&format!("{}/v1/events", self.url), Some(TOKEN), body)
            .send()
            .await
            .expect("request sent")
    }
}

/// POSTs JSON with an optional bearer token; returns status and JSON body.
pub async fn post_json(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let res = json_request(url, token, body)
        .send()
        .await
        .expect("request sent");
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// A JSON POST with an optional bearer token, ready to send.
fn json_request(url: &str, token: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let req = http()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    }
}

/// An HTTP client with a generous timeout (a hung server fails the test instead of hanging it).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A running flusher.
pub struct Flusher {
    pub proc: Proc,
}

impl Flusher {
    /// Starts `flusher` (run) with fast test timings (a blocking read of 200 ms unless `extra`
    /// gives `--block-ms`); `extra` adds flags, `env` adds variables.
    pub fn start(
        redis_url: &str,
        database_url: &str,
        stream_key: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Flusher {
        let mut cmd = Command::new(bin("flusher"));
        cmd.args(["--redis-url", redis_url, "--database-url", database_url])
            .args(["--stream-key", stream_key])
            .args(["--backoff-max-ms", "1000"])
            .args(["--metrics-bind", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info,flusher=debug");
        if !extra.contains(&"--block-ms") {
            cmd.args(["--block-ms", "200"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Flusher {
            proc: Proc::spawn("flusher", cmd),
        }
    }

    /// The base URL of the flusher's /metrics, /healthz and /readyz (waits for it to start).
    pub fn metrics_url(&self) -> String {
        let start = Instant::now();
        loop {
            let text = self.proc.log_text();
            if let Some(line) = text.lines().find(|l| l.starts_with("flusher metrics on ")) {
                return line["flusher metrics on ".len()..].trim().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "flusher did not start its metrics endpoint:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter from the flusher's last summary line (`written=…`, `dedup_batches=…`).
    pub fn last_count(&self, name: &str) -> Option<u64> {
        last_count(&self.proc.log_text(), name)
    }
}

/// A counter from the last summary line of a flusher log.
pub fn last_count(log: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    log.lines()
        .rev()
        .filter(|l| l.contains("written=") && l.contains("dedup_batches="))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&key))
                .and_then(|v| v.parse().ok())
        })
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

/// A Redis connection for checks.
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
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

/// A JSON array of `n` valid events named `name`, each with a fresh event_id.
pub fn batch(name: &str, n: usize) -> Value {
    json!((0..n).map(|i| event(name, i)).collect::<Vec<_>>())
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
    type Summary = (
        u64,
        redis::Value,
        redis::Value,
        Option<Vec<(String, String)>>,
    );
    let (_, _, _, consumers): Summary = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("XPENDING {key} {group}: {e}"));
    consumers
        .unwrap_or_default()
        .into_iter()
        .map(|(name, n)| (name, n.parse().expect("a pending count")))
        .collect()
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

/// `eventtracker_ingest_events_accepted_total` of a running ingest-api (required).
pub async fn accepted_by(ingest: &Ingest) -> f64 {
    metric(&ingest.url, "eventtracker_ingest_events_accepted_total")
        .await
        .expect("ingest-api exports eventtracker_ingest_events_accepted_total")
}

/// A valid event with a fresh event_id.
pub fn event(name: &str, i: usize) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "name": name,
        "timestamp": event_model::timestamp::format_timestamp(time::OffsetDateTime::now_utc()),
        "device_id": format!("device-{}", i % 7),
        "properties": {"i": i, "level": {"n": i % 10}},
    })
}

/// `redis-server` in the foreground on 127.0.0.1:`port` with its data in `dir`: AOF with
/// `appendfsync always` (an acknowledged write survives a crash), no RDB, `noeviction`.
fn redis_server(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
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
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            proc: None,
        };
        s.launch();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn launch(&mut self) {
        let cmd = redis_server(self.port, self.dir.path());
        self.proc = Some(Proc::spawn("redis-server", cmd));
        let port = self.port;
        let start = Instant::now();
        while Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
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

/// A private 3-master Redis Cluster (no replicas; AOF on, `appendfsync always`, node timeout 2 s,
/// `cluster-require-full-coverage no`), for tests of `--redis-cluster`. Node `i` keeps its
/// `nodes.conf` and AOF in `dir/node<i>`, so [`RedisCluster::restart`] brings back the same node
/// with its data. Driven with `redis-cli` only. Every node is SIGKILLed on drop.
pub struct RedisCluster {
    nodes: [Option<Proc>; 3],
    ports: [u16; 3],
    pub dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes and joins them with `redis-cli --cluster create`; returns once every
    /// node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let mut c = RedisCluster {
            nodes: [None, None, None],
            ports: cluster_ports(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for i in 0..3 {
            std::fs::create_dir(c.node_dir(i)).expect("node dir");
            c.launch(i);
        }
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(c.ports.map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_ok(&mut create);
        c.wait_ok();
        c
    }

    /// The seed list for `--redis-url` with `--redis-cluster`: `redis://127.0.0.1:P/,…`.
    pub fn urls(&self) -> String {
        self.ports
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .join(",")
    }

    pub fn ports(&self) -> [u16; 3] {
        self.ports
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[i])
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn launch(&mut self, i: usize) {
        let port = self.ports[i];
        let mut cmd = redis_server(port, &self.node_dir(i));
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-require-full-coverage",
            "no",
        ]);
        self.nodes[i] = Some(Proc::spawn(&format!("redis-cluster-node{i}-{port}"), cmd));
        let start = Instant::now();
        while !redis_cli(port, &["ping"]).is_some_and(|out| out.contains("PONG")) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis cluster node {i} did not answer PING on :{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node sees all three nodes, none flagged failing, and reports
    /// `cluster_state:ok`; panics after 30 s.
    fn wait_ok(&self) {
        let start = Instant::now();
        loop {
            let states = self.ports.map(cluster_node_state);
            if states.iter().all(|s| s == "ok") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redis cluster on ports {:?} not ok after 30 s: node states {states:?}",
                self.ports
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL node `i`: a crash. AOF with `always` keeps every acknowledged write.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts node `i` again on the same port and folder (it rejoins from `nodes.conf`), then
    /// waits until the whole cluster is ok again.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_ok();
    }

    /// Starts every node that is down, then waits until the whole cluster is ok again.
    pub fn restart_down(&mut self) {
        for i in 0..3 {
            if !self.is_up(i) {
                self.launch(i);
            }
        }
        self.wait_ok();
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// SIGSTOP node `i`: it keeps its connections but answers nothing (a hung host).
    pub fn freeze(&self, i: usize) {
        self.nodes[i].as_ref().expect("running").signal("STOP");
    }

    pub fn thaw(&self, i: usize) {
        self.nodes[i].as_ref().expect("running").signal("CONT");
    }

    /// The index of the node that serves `key`'s slot (asked from a running node).
    pub fn node_for_key(&self, key: &str) -> usize {
        let port = (0..3)
            .find(|&i| self.is_up(i))
            .map(|i| self.ports[i])
            .expect("a running cluster node");
        let slot: u16 = redis_cli(port, &["cluster", "keyslot", key])
            .and_then(|out| out.trim().parse().ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key} on :{port}"));
        let nodes = redis_cli(port, &["cluster", "nodes"]).expect("CLUSTER NODES");
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...`
        let owner = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false, // `[slot->-id]` migration markers
                }
            });
            let addr = fields.get(1)?.split('@').next()?;
            let node_port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
            serves.then_some(node_port)
        });
        let owner = owner.unwrap_or_else(|| panic!("no node serves slot {slot}:\n{nodes}"));
        self.ports
            .iter()
            .position(|&p| p == owner)
            .unwrap_or_else(|| panic!("slot {slot} is served by :{owner}, not one of ours"))
    }

    /// Moves the slot of `key` (with every key in it) from its node to node `to`, as
    /// `redis-cli --cluster reshard` does, one slot: IMPORTING/MIGRATING, MIGRATE the keys in
    /// batches, then SETSLOT NODE on every node. Clients see ASK during the move and MOVED after.
    /// Returns how many keys moved.
    pub fn move_slot_of(&self, key: &str, to: usize) -> usize {
        let from = self.node_for_key(key);
        assert_ne!(from, to, "{key} is on node {to} already");
        let (src, dst) = (self.ports[from], self.ports[to]);
        let cli = |port: u16, args: &[&str]| {
            redis_cli(port, args)
                .unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
                .trim()
                .to_string()
        };
        let slot = cli(src, &["cluster", "keyslot", key]);
        let (src_id, dst_id) = (
            cli(src, &["cluster", "myid"]),
            cli(dst, &["cluster", "myid"]),
        );
        cli(dst, &["cluster", "setslot", &slot, "importing", &src_id]);
        cli(src, &["cluster", "setslot", &slot, "migrating", &dst_id]);
        let mut moved = 0;
        loop {
            let keys = cli(src, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let dst_port = dst.to_string();
            args.extend([dst_port.as_str(), "", "0", "5000", "KEYS"]);
            args.extend(&keys);
            let reply = cli(src, &args);
            assert!(reply == "OK" || reply == "NOKEY", "MIGRATE: {reply}");
            moved += keys.len();
        }
        // The new owner first, then the old one, then the rest (as redis-cli does).
        let third = 3 - from - to;
        for i in [to, from, third] {
            if self.is_up(i) {
                cli(
                    self.ports[i],
                    &["cluster", "setslot", &slot, "node", &dst_id],
                );
            }
        }
        moved
    }
}

/// Three ports below 55000 whose cluster bus port (port + 10000) is free too, all distinct.
fn cluster_ports() -> [u16; 3] {
    let mut held = Vec::new(); // listeners kept open so the picks cannot collide with each other
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = l.local_addr().expect("local addr").port();
        if port >= 55000 {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + 10000)) else {
            continue;
        };
        held.push((l, bus));
        ports.push(port);
    }
    [ports[0], ports[1], ports[2]]
}

/// `redis-cli -p PORT ARGS...`: its stdout, or `None` if it could not run or connect. (Error
/// replies still exit 0: callers look at the text.)
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ok` when the node reports `cluster_state:ok`, knows 3 nodes and flags none as failing;
/// otherwise a short description, for the timeout message.
fn cluster_node_state(port: u16) -> String {
    let Some(info) = redis_cli(port, &["cluster", "info"]) else {
        return "down".into();
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .to_string()
    };
    let (state, known) = (field("cluster_state"), field("cluster_known_nodes"));
    let failing = redis_cli(port, &["cluster", "nodes"])
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "fail" || f == "fail?"))
        })
        .count();
    if state == "ok" && known == "3" && failing == 0 {
        "ok".into()
    } else {
        format!("cluster_state:{state} known_nodes:{known} failing:{failing}")
    }
}

/// A private PostgreSQL + TimescaleDB cluster, for tests that stop or restart it. Runs as the
/// `postgres` user (initdb and postgres refuse root) in a folder under /tmp that user can reach.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = std::env::temp_dir().join(unique("et-pg"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        run_ok(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let s = PgServer {
            port: free_port(),
            dir,
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

    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb \
             -c timescaledb.telemetry_level=off -c fsync=off",
            self.port,
            self.dir.display()
        );
        run_ok(
            as_postgres(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "-o", &opts, "-l"])
                .arg(self.dir.join("log"))
                .arg("start"),
        );
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

fn pg_bin(name: &str) -> PathBuf {
    Path::new("/usr/lib/postgresql/15/bin").join(name)
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// A sample with exactly these labels (`source="a",outcome="b"`), or `None`.
pub fn labelled_in(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
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

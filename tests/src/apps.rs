//! The pipeline's own processes, the real binaries: [`Ingest`] (ingest-api) and [`Flusher`],
//! with the HTTP helpers and event bodies the tests send.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::*;

/// A running ingest-api.
pub struct Ingest {
    pub proc: Proc,
    pub url: String,
}

/// The dev token every test server accepts, and its source name.
pub const TOKEN: &str = "test-token-0123456789";
pub const SOURCE: &str = "test-source";

impl Ingest {
    /// Starts ingest-api on a free port (unless `extra` has a `--bind`) with the test token;
    /// `extra` adds flags.
    pub fn start(redis_url: &str, stream_key: &str, extra: &[&str]) -> Ingest {
        let mut cmd = Command::new(bin("ingest-api"));
        if !extra.contains(&"--bind") {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        cmd.args(["--redis-url", redis_url])
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

    /// POSTs a JSON body that must be answered 200 (the test fails otherwise); the answer.
    pub async fn post_ok(&self, body: &Value) -> Value {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// POSTs a body given as JSON text (what a `Value` cannot hold, such as `1e-20000` as
    /// written) to `/v1/events` with the test token; returns status and JSON body.
    pub async fn post_text(&self, body: String) -> (u16, Value) {
        let res = text_request(
            &http(),
            &format!("{}/v1/events", self.url),
            Some(TOKEN),
            body,
        )
        .send()
        .await
        .expect("request sent");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
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
    text_request(&http(), url, token, body.to_string())
}

/// The same for a body given as JSON text, on the given client.
fn text_request(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: String,
) -> reqwest::RequestBuilder {
    let req = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body);
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
        let cmd = Self::command(redis_url, database_url, stream_key, extra, env);
        Flusher {
            proc: Proc::spawn("flusher", cmd),
        }
    }

    /// The same inside a network namespace: its URLs are as seen from inside.
    pub fn start_in(
        netns: &Netns,
        redis_url: &str,
        database_url: &str,
        stream_key: &str,
        extra: &[&str],
    ) -> Flusher {
        let cmd = Self::command(redis_url, database_url, stream_key, extra, &[]);
        Flusher {
            proc: Proc::spawn("flusher", netns.wrap(&cmd)),
        }
    }

    fn command(
        redis_url: &str,
        database_url: &str,
        stream_key: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
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
        cmd
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
}

/// A JSON array of `n` valid events named `name`, each with a fresh event_id.
pub fn batch(name: &str, n: usize) -> Value {
    json!((0..n).map(|i| event(name, i)).collect::<Vec<_>>())
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

/// What [`Pipeline::start`] starts: extra flags for ingest-api and for every flusher, extra
/// environment variables for the flushers, and how many flushers (one by default; 0 for a test
/// that starts its own later with [`Pipeline::start_flusher`]). `redis_url` and `admin_url`
/// put the pipeline on a test's own Redis or PostgreSQL instead of the shared ones.
#[derive(Clone, Copy)]
pub struct PipelineOptions<'a> {
    pub ingest: &'a [&'a str],
    pub flusher: &'a [&'a str],
    pub flusher_env: &'a [(&'a str, &'a str)],
    pub flushers: usize,
    pub redis_url: Option<&'a str>,
    pub admin_url: Option<&'a str>,
}

impl Default for PipelineOptions<'_> {
    fn default() -> Self {
        PipelineOptions {
            ingest: &[],
            flusher: &[],
            flusher_env: &[],
            flushers: 1,
            redis_url: None,
            admin_url: None,
        }
    }
}

impl PipelineOptions<'_> {
    /// The defaults without a flusher: the test starts its own with [`Pipeline::start_flusher`].
    pub fn without_flushers() -> Self {
        PipelineOptions {
            flushers: 0,
            ..Default::default()
        }
    }
}

/// The whole pipeline on the shared services, for one test: its own stream key and migrated
/// database, one ingest-api and the flushers asked for. Fields drop flushers first, database
/// last (as the locals of the prelude it replaces did).
pub struct Pipeline {
    pub flushers: Vec<Flusher>,
    pub ingest: Ingest,
    pub db: TestDb,
    pub key: String,
    pub redis_url: String,
}

impl Pipeline {
    pub async fn start(options: PipelineOptions<'_>) -> Pipeline {
        let redis_url = options
            .redis_url
            .map_or_else(shared_redis_url, str::to_string);
        let admin_url = options
            .admin_url
            .map_or_else(shared_admin_url, str::to_string);
        let key = unique("events");
        let db = TestDb::migrated(&admin_url).await;
        let ingest = Ingest::start(&redis_url, &key, options.ingest);
        let mut pipeline = Pipeline {
            flushers: Vec::new(),
            ingest,
            db,
            key,
            redis_url,
        };
        pipeline.flushers = (0..options.flushers)
            .map(|_| pipeline.start_flusher(options.flusher, options.flusher_env))
            .collect();
        pipeline
    }

    /// One more flusher on this pipeline's queue and database (not kept in `flushers`).
    pub fn start_flusher(&self, extra: &[&str], env: &[(&str, &str)]) -> Flusher {
        Flusher::start(&self.redis_url, &self.db.url, &self.key, extra, env)
    }

    /// A Redis connection to this pipeline's queue, for checks.
    pub async fn redis(&self) -> MultiplexedConnection {
        redis_conn(&self.redis_url).await
    }
}

/// A batch of events named `name`, numbered from `first`, carrying these client-chosen ids, as
/// JSON text.
pub fn batch_with_ids(name: &str, first: usize, ids: &[uuid::Uuid]) -> String {
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut e = event(name, first + i);
            e["event_id"] = json!(id.to_string());
            e
        })
        .collect();
    json!(events).to_string()
}

/// Posts `body` to `/v1/events` until it is answered 200, as an SDK retries: 503 and connection
/// errors are retried every 200 ms (each counted in `retries`), any other status panics.
pub async fn post_until_acked(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    retries: &std::sync::atomic::AtomicU64,
) {
    loop {
        let res = text_request(
            http,
            &format!("{url}/v1/events"),
            Some(TOKEN),
            body.to_string(),
        )
        .send()
        .await;
        match res {
            Ok(r) if r.status().as_u16() == 200 => return,
            Ok(r) if r.status().as_u16() == 503 => {}
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => {}
        }
        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

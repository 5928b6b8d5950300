//! What production does to the pipeline by itself, and what an attacker tries: a Redis at
//! `maxmemory`, bodies that amplify in memory, values PostgreSQL cannot store, flags at their
//! extremes. Each test proves its fault happened, then that the system recovered by itself with
//! nothing lost and nothing stored twice.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use et_tests::*;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// Redis out of memory (noeviction) with a backlog: ingest answers 503 `queue_full` before Redis
/// refuses anything; a flusher started against the full Redis starts, drains it (acknowledging
/// and dead-lettering while Redis refuses writes), and ingest answers 200 again on its own.
#[tokio::test]
async fn a_full_redis_drains_by_itself_and_ingest_answers_again() {
    let redis = RedisServer::start();
    let db = TestDb::migrated(&shared_admin_url()).await;
    let key = unique("events");
    let ingest = Ingest::start(&redis.url(), &key, &[]);
    // A flusher ran once: the consumer group and the recorded shard count exist.
    let mut first = Flusher::start(&redis.url(), &db.url, &key, &[], &[]);
    assert_eq!(ingest.post(&batch("warm", 10)).await.0, 200);
    db.wait_rows(10).await;
    first.proc.signal("TERM");
    assert!(first.proc.wait_exit(LONG).success());

    // The backlog of an outage: 2,000 events of ~1 KiB and one entry no flusher can decode.
    let mut conn = redis_conn(&redis.url()).await;
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("e")
        .arg("not an event")
        .query_async(&mut conn)
        .await
        .unwrap();
    for round in 0..20 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                let mut e = event("backlog", round * 100 + i);
                e["properties"]["pad"] = json!("p".repeat(1000));
                e
            })
            .collect();
        assert_eq!(ingest.post(&json!(events)).await.0, 200);
    }
    assert_eq!(xlen(&mut conn, &key).await, 2001);

    // Redis is full: maxmemory below what it holds, and a plain write is refused.
    let used = redis_memory(redis.port, "used_memory");
    let max = used * 95 / 100;
    assert_eq!(
        redis_cli_out(
            redis.port,
            &["CONFIG", "SET", "maxmemory", &max.to_string()]
        ),
        "OK"
    );
    let refused = redis_cli_out(redis.port, &["XADD", "probe", "*", "f", "v"]);
    assert!(refused.contains("OOM"), "Redis is not full: {refused}");

    // ingest-api says queue_full (its own limit, 0.9 of maxmemory) and shows the ratio.
    wait_for("ingest to answer 503 queue_full", LONG, || async {
        let (status, body) = ingest.post(&batch("while-full", 1)).await;
        (status == 503 && body["error"] == "queue_full").then_some(())
    })
    .await;
    let ratio = metric(&ingest.url, "eventtracker_redis_memory_ratio")
        .await
        .expect("ingest exports eventtracker_redis_memory_ratio");
    assert!(ratio > 0.9, "ratio {ratio}");

    // A flusher started against the full Redis drains everything.
    let flusher = Flusher::start(&redis.url(), &db.url, &key, &[], &[]);
    db.wait_rows(2010).await;
    wait_stream_empty(&conn, &key).await;
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 1);
    assert_eq!(db.rows_and_distinct().await, (2010, 2010));
    assert_eq!(pending(&mut conn, &key, "flushers").await, 0);
    let flusher_ratio = metric(&flusher.metrics_url(), "eventtracker_redis_memory_ratio")
        .await
        .expect("the flusher exports eventtracker_redis_memory_ratio");
    assert!(flusher_ratio > 0.0);

    // Memory is freed, and ingest-api takes events again without a restart.
    wait_for("ingest to answer 200 again", LONG, || async {
        (ingest.post(&batch("after", 5)).await.0 == 200).then_some(())
    })
    .await;
    db.wait_rows(2015).await;
}

/// Body shapes that are tiny gzipped and inflate into millions of array elements. Each is
/// refused (413 past 1,000 events, or 503 server_busy past the byte budget), and the server's
/// peak memory stays under the budget plus 64 MiB.
#[tokio::test]
async fn amplifying_bodies_are_refused_within_the_byte_budget() {
    let budget = 32 * MIB;
    let ingest = Ingest::start(
        &shared_redis_url(),
        &unique("events"),
        &["--max-inflight-bytes", &budget.to_string()],
    );
    for _ in 0..3 {
        assert_eq!(ingest.post(&batch("warm", 100)).await.0, 200);
    }
    let deep = format!("{}0{}", "[".repeat(100), "]".repeat(100));
    let shapes = ["0", "{}", "[]", "null", deep.as_str()];
    let bodies: Vec<Vec<u8>> = shapes
        .iter()
        .map(|shape| {
            let target = 10 * MIB as usize - 64;
            let mut text = String::with_capacity(target + 64);
            text.push_str("{\"events\":[");
            text.push_str(shape);
            while text.len() + shape.len() + 3 < target {
                text.push(',');
                text.push_str(shape);
            }
            text.push_str("]}");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        })
        .collect();
    let sends = (0..32).map(|i| {
        let body = bodies[i % bodies.len()].clone();
        let url = format!("{}/v1/events", ingest.url);
        async move {
            let res = http()
                .post(url)
                .header("Authorization", format!("Bearer {TOKEN}"))
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip")
                .body(body)
                .send()
                .await
                .expect("a response");
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body["error"].as_str().unwrap_or("").to_string())
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let too_large = answers.iter().filter(|a| a.0 == 413).count();
    for (status, error) in &answers {
        assert!(
            (*status == 413 && error == "payload_too_large")
                || (*status == 503 && error == "server_busy"),
            "{status} {error}"
        );
    }
    assert!(too_large > 0, "no body was read at all: {answers:?}");
    let peak = peak_rss(ingest.proc.pid());
    println!(
        "peak RSS {:.1} MiB, {too_large} of 32 answered 413",
        peak as f64 / MIB as f64
    );
    assert!(
        peak < budget + 64 * MIB,
        "peak RSS {:.1} MiB is over the budget + 64 MiB",
        peak as f64 / MIB as f64
    );
    assert_eq!(ingest.post(&batch("still-up", 1)).await.0, 200);
}

/// Numbers that parse as an f64 but that PostgreSQL's jsonb refuses (22003) are rejected per
/// event with the field named, instead of being accepted and then dead-lettered.
#[tokio::test]
async fn numbers_postgresql_cannot_store_are_refused_at_the_door() {
    let ingest = Ingest::start(&shared_redis_url(), &unique("events"), &[]);
    let with = |raw: &str| {
        format!(r#"{{"name":"n","timestamp":"2026-01-01T00:00:00Z","properties":{{"x":{raw}}}}}"#)
    };
    let long_fraction = format!("0.{}", "1".repeat(17_000));
    let body = format!(
        "[{},{},{},{}]",
        with("1e-20000"),
        with(&long_fraction),
        with("0e-16384"),
        with("1e-16383")
    );
    let res = http()
        .post(format!("{}/v1/events", ingest.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(
        rejected
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for r in rejected {
        assert!(
            r["error"].as_str().unwrap().starts_with("properties: "),
            "{r}"
        );
    }
}

/// `flusher migrate` refuses a database whose encoding is not UTF8 (jsonb and text would then
/// refuse what ingest-api accepted).
#[tokio::test]
async fn migrate_refuses_a_database_that_is_not_utf8() {
    let name = unique("et_ascii");
    let admin = connect(&shared_admin_url()).await;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let url = format!("{}/{name}", shared_admin_url().rsplit_once('/').unwrap().0);
    let (ok, out) = migrate(&url);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    assert!(!ok, "migrate accepted a SQL_ASCII database:\n{out}");
    assert!(out.contains("UTF8"), "{out}");
}

/// Numeric flags (found in `--help`) and the durations, fed extremes: each start is clean or a
/// clean refusal (exit code 2, naming the flag), never a panic, also on the first request.
#[tokio::test]
async fn numeric_flags_at_their_extremes_start_cleanly_or_are_refused() {
    let extremes = ["0", "-1", "18446744073709551615", "18446744073709551616"];
    for binary in ["ingest-api", "flusher"] {
        let flags = numeric_flags(binary);
        assert!(flags.len() >= 8, "{binary}: {flags:?}");
        for flag in &flags {
            for value in extremes {
                try_flag(binary, flag, value).await;
            }
        }
    }
    for value in ["213503982334602d", "0s", "18446744073709551615s", "-1d"] {
        try_flag("flusher", "--retention", value).await;
    }
    for value in ["9223372036854775807", "-9223372036854775808"] {
        try_flag("ingest-api", "--max-future-secs", value).await;
    }
}

/// The `--flag`s of `binary --help` (and `flusher run --help`) whose default is a number.
fn numeric_flags(binary: &str) -> Vec<String> {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let mut flags = Vec::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") {
            current = t.split_whitespace().next().map(str::to_string);
        }
        if let (Some(flag), Some(d)) = (&current, line.split("[default: ").nth(1)) {
            let value = d.split(']').next().unwrap_or("");
            if value.parse::<f64>().is_ok() && !flags.contains(flag) {
                flags.push(flag.clone());
            }
        }
    }
    flags
}

async fn try_flag(binary: &str, flag: &str, value: &str) {
    let arg = format!("{flag}={value}");
    let mut cmd = Command::new(bin(binary));
    // Nothing listens on port 1: the binaries start without Redis and PostgreSQL.
    if binary == "ingest-api" {
        cmd.args(["--bind", "127.0.0.1:0", "--tokens", "s=secret-token-0123"])
            .args(["--redis-url", "redis://127.0.0.1:1/"]);
    } else {
        cmd.args(["--redis-url", "redis://127.0.0.1:1/"])
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/x"])
            .args(["--metrics-bind", "127.0.0.1:0"]);
    }
    cmd.arg(&arg).env("RUST_LOG", "info");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let ready = if binary == "ingest-api" {
        "ingest-api listening on "
    } else {
        "flusher metrics on "
    };
    let start = Instant::now();
    let outcome = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Err(status);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(ready)) {
            break Ok(line[ready.len()..].trim().to_string());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{binary} {arg}: neither started nor refused:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    match outcome {
        Err(status) => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert_eq!(status.code(), Some(2), "{binary} {arg}:\n{text}");
            assert!(text.contains(flag), "{binary} {arg}: {text}");
            assert!(!text.contains("panicked"), "{binary} {arg}: {text}");
        }
        Ok(url) => {
            if binary == "ingest-api" {
                let (status, _) = post_json(
                    &format!("{url}/v1/events"),
                    Some("secret-token-0123"),
                    &batch("extreme", 1),
                )
                .await;
                assert!(
                    status == 503 || status == 200,
                    "{binary} {arg}: status {status}"
                );
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(!text.contains("panicked"), "{binary} {arg}: {text}");
        }
    }
}

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
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&redis.url()),
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    // A flusher ran once: the consumer group and the recorded shard count exist.
    let mut first = p.start_flusher(&[], &[]);
    assert_eq!(ingest.post(&batch("warm", 10)).await.0, 200);
    db.wait_rows(10).await;
    first.proc.signal("TERM");
    assert!(first.proc.wait_exit(LONG).success());

    // The backlog of an outage: 2,000 events of ~1 KiB and one entry no flusher can decode.
    let mut conn = p.redis().await;
    queue_an_outage_backlog(&mut conn, ingest, key).await;
    assert_eq!(xlen(&mut conn, key).await, 2001);
    fill_redis(&redis);

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
    let flusher = p.start_flusher(&[], &[]);
    db.wait_rows(2010).await;
    wait_stream_empty(&conn, key).await;
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 1);
    assert_eq!(db.rows_and_distinct().await, (2010, 2010));
    assert_eq!(pending(&mut conn, key, "flushers").await, 0);
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

/// An outage's backlog: one entry no flusher can decode, then 2,000 events of ~1 KiB.
async fn queue_an_outage_backlog(conn: &mut MultiplexedConnection, ingest: &Ingest, key: &str) {
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("e")
        .arg("not an event")
        .query_async(conn)
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
}

/// Redis full: maxmemory set below what it holds, and a plain write is refused with OOM.
fn fill_redis(redis: &RedisServer) {
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
    let bodies: Vec<Vec<u8>> = shapes.iter().map(|s| amplifying_body(s)).collect();
    let url = format!("{}/v1/events", ingest.url);
    let sends = (0..32).map(|i| post_gzipped(&url, bodies[i % bodies.len()].clone()));
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

/// `{"events":[shape,shape,…]}` of nearly 10 MiB, gzipped (a few KiB).
fn amplifying_body(shape: &str) -> Vec<u8> {
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
}

/// POSTs a gzipped body with the test token; the status and the error code.
async fn post_gzipped(url: &str, body: Vec<u8>) -> (u16, String) {
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
    let (status, body) = ingest.post_text(body).await;
    assert_eq!(status, 200);
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

/// Numbers past a double's range that PostgreSQL's numeric stores (`'{"v":1e400}'::jsonb` works)
/// are accepted and stored as sent: the contract allows every number numeric stores. They were
/// refused with "number out of range", as the first pass read numbers as f64.
#[tokio::test]
async fn numbers_beyond_a_double_that_postgresql_stores_are_accepted_and_stored() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let numbers = ["1e400", "-1.5e+9999", "1e-400", "12345678901234567890e300"];
    let events: Vec<String> = numbers
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            format!(
                r#"{{"name":"big{i}","timestamp":"2026-01-01T00:00:00Z","properties":{{"x":{raw}}}}}"#
            )
        })
        .collect();
    let (status, body) = p.ingest.post_text(format!("[{}]", events.join(","))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], numbers.len(), "{body}");
    p.db.wait_rows(numbers.len() as i64).await;
    let client = p.db.client().await;
    for (i, raw) in numbers.iter().enumerate() {
        let same: bool = client
            .query_one(
                "SELECT properties = jsonb_build_object('x', $2::text::numeric) FROM events WHERE name = $1",
                &[&format!("big{i}"), raw],
            )
            .await
            .unwrap()
            .get(0);
        assert!(same, "{raw} stored as sent");
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

/// PostgreSQL stops answering (its processes SIGSTOPped) under load, longer than
/// `--pg-timeout-ms`: the flusher's writes time out (seen on its error counter while frozen),
/// and after the thaw every accepted event is stored exactly once.
#[tokio::test]
async fn a_silent_postgresql_times_out_and_nothing_is_lost() {
    let pg = PgServer::start();
    let p = Pipeline::start(PipelineOptions {
        admin_url: Some(&pg.admin_url()),
        flusher: &["--claim-idle-ms", "4000", "--pg-timeout-ms", "1000"],
        ..Default::default()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let flusher = &p.flushers[0];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(ingest.url.clone(), stop.clone()));
    db.wait_rows(100).await;
    let errors_before = flusher_count(flusher, "postgres_errors").await;
    pg.freeze();
    wait_for(
        "a write to time out while PostgreSQL is frozen",
        LONG,
        || async {
            let errors = flusher_count(flusher, "postgres_errors").await;
            (errors > errors_before).then_some(())
        },
    )
    .await;
    assert!(
        flusher.proc.log_text().contains("--pg-timeout-ms"),
        "no timeout in the flusher's log"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.thaw();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = load.await.unwrap() as i64;
    db.wait_rows(accepted).await;
    let mut conn = p.redis().await;
    wait_stream_empty(&conn, key).await;
    assert_eq!(db.rows_and_distinct().await, (accepted, accepted));
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 0);
}

/// Batches of 20 every 20 ms until `stop`, each of which must be answered 200; the events
/// accepted.
async fn steady_load(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut accepted = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (status, body) = post_json(
            &format!("{url}/v1/events"),
            Some(TOKEN),
            &batch("frozen-pg", 20),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        accepted += body["accepted"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    accepted
}

/// An operator's trigger refuses one marked event with a custom SQLSTATE. After 3 failures in a
/// row the batch is split; the row refused alone while its siblings are stored is dead-lettered
/// with its SQLSTATE. The attempts are counted by a sequence the trigger bumps (not rolled
/// back): 3 at each of the 7 levels the split takes to reach the row.
#[tokio::test]
async fn a_row_refused_with_an_unexpected_sqlstate_is_isolated() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    db.client()
        .await
        .batch_execute(
            "CREATE SEQUENCE poison_attempts;
             CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.name = 'poison' THEN
                 PERFORM nextval('poison_attempts');
                 RAISE EXCEPTION 'poison refused' USING ERRCODE = 'ET001';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON events
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .unwrap();
    let mut events: Vec<Value> = (0..50).map(|i| event("fine", i)).collect();
    events[17]["name"] = json!("poison");
    assert_eq!(ingest.post(&json!(events)).await.0, 200);
    let _flusher = p.start_flusher(&["--backoff-initial-ms", "10"], &[]);
    let mut conn = p.redis().await;
    let dead_key = format!("{key}:dead");
    wait_for("the poison row to be dead-lettered", LONG, || {
        let mut c = conn.clone();
        let dead_key = dead_key.clone();
        async move { (xlen(&mut c, &dead_key).await == 1).then_some(()) }
    })
    .await;
    db.wait_rows(49).await;
    wait_stream_empty(&conn, key).await;
    let dead: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&dead_key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fields = &dead[0].1;
    assert!(
        fields.contains(&("dl_sqlstate".into(), "ET001".into())),
        "{fields:?}"
    );
    let attempts: i64 = db
        .client()
        .await
        .query_one("SELECT last_value FROM poison_attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 3 * 7);
    assert_eq!(db.rows_and_distinct().await, (49, 49));
}

/// Two flushers, a claim window shorter than one isolation (a trigger sleeps on every row), one
/// bad row: exactly one dead letter, and `requeue --all` puts it back once.
#[tokio::test]
async fn a_slow_isolation_dead_letters_once() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.name = 'slow' THEN PERFORM pg_sleep(0.01); END IF;
               IF NEW.name = 'bad' THEN
                 RAISE EXCEPTION 'bad row' USING ERRCODE = '22023';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER slow_rows BEFORE INSERT ON events
               FOR EACH ROW EXECUTE FUNCTION slow_rows();",
        )
        .await
        .unwrap();
    let mut events: Vec<Value> = (0..100).map(|i| event("slow", i)).collect();
    events[93]["name"] = json!("bad");
    let flags = ["--claim-idle-ms", "2000", "--pg-timeout-ms", "1900"];
    let mut a = p.start_flusher(&flags, &[]);
    let mut b = p.start_flusher(&flags, &[]);
    a.metrics_url();
    b.metrics_url();
    assert_eq!(ingest.post(&json!(events)).await.0, 200);
    db.wait_rows(99).await;
    let mut conn = p.redis().await;
    wait_stream_empty(&conn, key).await;
    let dead_key = format!("{key}:dead");
    assert_eq!(pending(&mut conn, key, "flushers").await, 0);
    // Nothing pending and the stream empty: neither flusher holds an entry it could still
    // dead-letter (the move needs the entry pending with it).
    assert_eq!(xlen(&mut conn, &dead_key).await, 1);
    a.proc.signal("TERM");
    b.proc.signal("TERM");
    assert!(a.proc.wait_exit(LONG).success());
    assert!(b.proc.wait_exit(LONG).success());
    let out = Command::new(bin("flusher"))
        .args(["dead-letters", "requeue", "--all"])
        .args(["--redis-url", &p.redis_url, "--stream-key", key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(xlen(&mut conn, key).await, 1);
    assert_eq!(xlen(&mut conn, &dead_key).await, 0);
    assert_eq!(db.rows_and_distinct().await, (99, 99));
}

/// One source limited to 100 events/s with a burst of 200, sending through two ingest-api
/// instances at once: what both admit together stays within burst + rate x time (the limit
/// lives in Redis, not in each instance), the rest is refused whole with 429 rate_limited and
/// Retry-After, and another source is never limited. Per-source counters add up.
#[tokio::test]
async fn a_noisy_source_is_limited_across_instances_and_others_are_not() {
    let key = unique("events");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "quiet=quiet-token-0123456789\n").unwrap();
    let tokens_flag = tokens.display().to_string();
    let flags = [
        "--max-events",
        "50",
        "--rate-limits",
        "test-source=100/200",
        "--tokens-file",
        tokens_flag.as_str(),
    ];
    let a = Ingest::start(&shared_redis_url(), &key, &flags);
    let b = Ingest::start(&shared_redis_url(), &key, &flags);
    let started = Instant::now();
    let (mut admitted, mut limited, mut quiet_ok) = (0u64, 0u64, 0u64);
    for round in 0..20 {
        for ingest in [&a, &b] {
            if admitted_or_rate_limited(ingest, round).await {
                admitted += 50;
            } else {
                limited += 50;
            }
        }
        let (status, _) = post_json(
            &format!("{}/v1/events", a.url),
            Some("quiet-token-0123456789"),
            &batch("quiet", 50),
        )
        .await;
        assert_eq!(status, 200, "the quiet source was limited");
        quiet_ok += 50;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("admitted {admitted}, limited {limited} in {elapsed:.2}s");
    // The burst is admitted at once; past it, about rate x time (one batch of slack).
    assert!(admitted >= 200, "admitted {admitted}");
    assert!(
        admitted as f64 <= 200.0 + 100.0 * elapsed + 50.0,
        "admitted {admitted} in {elapsed:.2}s"
    );
    assert!(limited > 0);
    let pages = [scrape(&a.url).await, scrape(&b.url).await];
    let sum = |outcome: &str, source: &str| source_events(&pages, source, outcome);
    assert_eq!(sum("accepted", "test-source"), admitted as f64);
    assert_eq!(sum("rate_limited", "test-source"), limited as f64);
    assert_eq!(sum("accepted", "quiet"), quiet_ok as f64);
    assert_eq!(sum("rate_limited", "quiet"), 0.0);
    // A burst below a full batch is refused at start.
    let out = Command::new(bin("ingest-api"))
        .args(["--bind", "127.0.0.1:0", "--tokens", "s=secret-token-0123"])
        .args(["--rate-limits", "s=10/20"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-events"));
}

/// Posts a batch of 50 noisy events: `true` when admitted; `false` when refused whole with 429
/// rate_limited and a Retry-After of 1 or 2 s; any other answer fails the test.
async fn admitted_or_rate_limited(ingest: &Ingest, round: usize) -> bool {
    let res = ingest.send(&batch("noisy", 50)).await;
    match res.status().as_u16() {
        200 => true,
        429 => {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
            false
        }
        other => panic!("round {round}: status {other}"),
    }
}

/// `eventtracker_ingest_source_events_total{source,outcome}` added up over several instances'
/// pages; a page without the series counts -1 (so the sum cannot match by accident).
fn source_events(pages: &[String], source: &str, outcome: &str) -> f64 {
    let labels = format!("source=\"{source}\",outcome=\"{outcome}\"");
    pages
        .iter()
        .map(|page| {
            labelled_in(page, "eventtracker_ingest_source_events_total", &labels).unwrap_or(-1.0)
        })
        .sum()
}

/// A second flusher on the same host with the default metrics address is told which flag to
/// set, once (the error used to repeat its cause: `Address already in use … : Address already
/// in use …`).
#[tokio::test]
async fn a_second_flusher_on_one_host_is_told_to_set_metrics_bind() {
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let run = || {
        Command::new(bin("flusher"))
            .args(["--redis-url", "redis://127.0.0.1:1/"])
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/x"])
            .args(["--metrics-bind", &bind])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run();
    let first_log = first.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(first_log));
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("flusher metrics on "), "{line}");
    let second = run().wait_with_output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{text}");
    assert!(text.contains("--metrics-bind"), "{text}");
    assert_eq!(text.matches("Address already in use").count(), 1, "{text}");
}

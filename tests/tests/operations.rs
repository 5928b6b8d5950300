//! Running it in production: metrics with exact counts (checked by promtool), backlog and lag,
//! flusher probes, JSON logs, retention, and the dashboard's metrics existing for real.

use std::process::{Command, Stdio};
use std::time::Duration;

use et_tests::*;
use serde_json::{Value, json};

/// The value of one series (`name{labels}` exactly as rendered, or a bare name).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by scripts/setup)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After a known load, both binaries' /metrics show the exact counts and pass promtool; backlog
/// and lag rise while no flusher runs and fall to zero when one does.
#[tokio::test]
async fn metrics_count_exactly_and_track_backlog() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let ingest = &p.ingest;
    let ts = event_model::timestamp::format_timestamp(time::OffsetDateTime::now_utc());
    for _ in 0..4 {
        // Fresh event_ids each time: a repeat would be de-duplicated, not counted.
        let mut events: Vec<Value> = (0..25).map(|i| event("metric", i)).collect();
        events.push(json!({"name": "", "timestamp": ts}));
        events.push(json!({"name": "x", "timestamp": ts, "colour": "red"}));
        events.push(json!({"name": "x", "timestamp": "never"}));
        let (status, _) = ingest.post(&json!(events)).await;
        assert_eq!(status, 200);
    }
    let (status, _) = post_json(&format!("{}/v1/events", ingest.url), None, &json!([])).await;
    assert_eq!(status, 401);

    // No flusher yet: the backlog is all 100 events and the lag grows.
    let first = wait_for("backlog 100", Duration::from_secs(30), || async {
        let m = scrape(&ingest.url).await;
        (value(&m, "eventtracker_queue_backlog") == Some(100.0)).then_some(m)
    })
    .await;
    let lag1 = value(&first, "eventtracker_queue_lag_seconds").unwrap();
    let m = wait_for("the lag to grow", Duration::from_secs(30), || async {
        let m = scrape(&ingest.url).await;
        (value(&m, "eventtracker_queue_lag_seconds").unwrap() > lag1 + 0.5).then_some(m)
    })
    .await;
    assert_series(&m, INGEST_AFTER_THE_LOAD);
    assert!(!m.contains(TOKEN), "no token in metrics");
    promtool_check(&m);

    let flusher = p.start_flusher(&[], &[]);
    let furl = flusher.metrics_url();
    let fm = wait_for("100 written", Duration::from_secs(60), || async {
        let m = scrape(&furl).await;
        (value(&m, "eventtracker_flusher_events_written_total") == Some(100.0)).then_some(m)
    })
    .await;
    assert_series(&fm, FLUSHER_AFTER_THE_LOAD);
    promtool_check(&fm);
    for base in [ingest.url.clone(), furl.clone()] {
        wait_for(
            "backlog and lag back to 0",
            Duration::from_secs(30),
            || async {
                let m = scrape(&base).await;
                (value(&m, "eventtracker_queue_backlog") == Some(0.0)
                    && value(&m, "eventtracker_queue_lag_seconds") == Some(0.0))
                .then_some(())
            },
        )
        .await;
    }
    assert_eq!(p.db.count().await, 100);
}

/// ingest-api's counts after the load of [`metrics_count_exactly_and_track_backlog`]: 100
/// events accepted, 4 rejected for each of three reasons, 4 requests answered 200 and one 401.
const INGEST_AFTER_THE_LOAD: &[(&str, f64)] = &[
    ("eventtracker_ingest_events_accepted_total", 100.0),
    (
        r#"eventtracker_ingest_events_rejected_total{reason="name"}"#,
        4.0,
    ),
    (
        r#"eventtracker_ingest_events_rejected_total{reason="unknown_field"}"#,
        4.0,
    ),
    (
        r#"eventtracker_ingest_events_rejected_total{reason="timestamp"}"#,
        4.0,
    ),
    (
        r#"eventtracker_ingest_requests_total{route="/v1/events",status="200"}"#,
        4.0,
    ),
    (
        r#"eventtracker_ingest_requests_total{route="/v1/events",status="401"}"#,
        1.0,
    ),
];

/// The flusher's, once it wrote those 100 events: no de-duplication, no dead letter.
const FLUSHER_AFTER_THE_LOAD: &[(&str, f64)] = &[
    (
        r#"eventtracker_flusher_batches_written_total{path="dedup"}"#,
        0.0,
    ),
    ("eventtracker_flusher_dead_lettered_total", 0.0),
];

/// Each series (`name{labels}` exactly as rendered) has exactly its value on the page.
fn assert_series(metrics: &str, want: &[(&str, f64)]) {
    for (series, v) in want {
        assert_eq!(value(metrics, series), Some(*v), "{series}");
    }
}

/// The flusher's /readyz is 503 while PostgreSQL is stopped and 200 once it is back; /healthz
/// stays 200 throughout. PostgreSQL of its own.
#[tokio::test]
async fn flusher_readiness_follows_postgres() {
    let pg = PgServer::start();
    let db = TestDb::migrated(&pg.admin_url()).await;
    let flusher = Flusher::start(&shared_redis_url(), &db.url, &unique("events"), &[], &[]);
    let base = flusher.metrics_url();
    let status = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    wait_for("ready", Duration::from_secs(30), || async {
        (status("/readyz").await == 200).then_some(())
    })
    .await;
    pg.stop();
    wait_for("not ready", Duration::from_secs(30), || async {
        (status("/readyz").await == 503).then_some(())
    })
    .await;
    assert_eq!(status("/healthz").await, 200);
    pg.start_server();
    wait_for("ready again", Duration::from_secs(60), || async {
        (status("/readyz").await == 200).then_some(())
    })
    .await;
}

/// `--log-format json` writes one JSON object a line.
#[tokio::test]
async fn json_logs() {
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--log-format", "json"],
        flusher: &["--log-format", "json"],
        ..Default::default()
    })
    .await;
    let (flusher, ingest) = (&p.flushers[0], &p.ingest);
    flusher.metrics_url();
    for proc in [&flusher.proc, &ingest.proc] {
        // The start-up lines come a moment after the listening line: wait for them.
        let text = wait_for("JSON log lines", Duration::from_secs(30), || async {
            let text = proc.log_text();
            text.lines().any(|l| l.starts_with('{')).then_some(text)
        })
        .await;
        for l in text.lines().filter(|l| !l.contains(" on http://")) {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert!(
                v["level"].is_string() && v["msg"].is_string() && v["ts"].is_string(),
                "{l}"
            );
        }
    }
}

/// Rows older than --retention disappear with their chunks; newer ones stay.
#[tokio::test]
async fn retention_drops_old_chunks_only() {
    let db = TestDb::migrated(&shared_admin_url()).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO events (time, event_id, name, source, received_at)
             SELECT now() - d * interval '1 day', gen_random_uuid(), 'old' || d, 's', now()
             FROM generate_series(0, 60, 5) AS d",
        )
        .await
        .unwrap();
    let before = chunk_count(&client).await;
    let (redis_url, key) = (shared_redis_url(), unique("events"));
    let args = ["--database-url", &db.url, "--redis-url", &redis_url];
    let out = Command::new(bin("flusher"))
        .args(["retention", "--retention", "30d", "--stream-key", &key])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<i32> = client
        .query(
            "SELECT (extract(day from now() - time))::int FROM events ORDER BY time",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !left.is_empty() && left.iter().all(|d| *d <= 30),
        "kept {left:?}"
    );
    assert_eq!(left.len(), 7, "0, 5, …, 30 days old stay: {left:?}");
    assert!(chunk_count(&client).await < before, "chunks were dropped");
    // And recorded for ingest-api, which refuses events older than that.
    let mut r = redis_conn(&redis_url).await;
    let recorded: String = redis::cmd("GET")
        .arg(format!("{key}:retention"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(recorded, (30 * 86_400).to_string());
}

async fn chunk_count(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'events'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Accepted ⇒ kept for the retention period. With a flusher running `--retention 30d`, events
/// dated 2001 (after `--min-timestamp`, before what retention keeps) were answered 200 and
/// deleted by the next pass: now ingest-api learns the retention the flushers record in Redis
/// and refuses them, one by one, with a reason and a counter; the young events of the same batch
/// are stored and stay through retention passes.
#[tokio::test]
async fn events_older_than_the_retention_are_refused_not_accepted_then_deleted() {
    let p = Pipeline::start(PipelineOptions {
        flusher: &["--retention", "30d", "--retention-every-secs", "1"],
        ..Default::default()
    })
    .await;
    let dated = |name: &str, i: usize, timestamp: &str| {
        let mut e = event(name, i);
        e["timestamp"] = json!(timestamp);
        e
    };
    // ingest-api reads the recorded retention every 250 ms: wait until the flusher's is seen.
    let old = json!([dated("old", 0, "2001-06-01T00:00:00Z")]);
    let (status, body) = wait_for(
        "ingest-api to refuse an event from 2001",
        Duration::from_secs(30),
        || async {
            let (status, body) = p.ingest.post(&old).await;
            (status != 200).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_events", "{body}");
    let why = body["rejected"][0]["error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("timestamp: is older than the retention"),
        "{body}"
    );
    // A batch of both: the young are stored, each old one is refused by index.
    let mut events: Vec<Value> = (0..20)
        .map(|i| dated("old", i, "2001-06-01T00:00:00Z"))
        .collect();
    events.extend((0..5).map(|i| event("young", i)));
    let body = p.ingest.post_ok(&json!(events)).await;
    assert_eq!(body["accepted"], 5, "{body}");
    let rejected: Vec<u64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, (0..20).collect::<Vec<u64>>(), "{body}");
    p.db.wait_rows(5).await;
    let refused = metric(
        &p.ingest.url,
        "eventtracker_ingest_events_rejected_total{reason=\"retention\"}",
    )
    .await;
    assert_eq!(
        refused,
        Some(21.0),
        "counted apart from other timestamp errors"
    );
    // Retention passes run every second; the young rows stay, and no old row was ever stored.
    let flusher = &p.flushers[0];
    wait_for("two retention passes", LONG, || async {
        (flusher
            .proc
            .log_text()
            .matches("retention: dropped")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(p.db.count().await, 5);
}

/// The Lua scripts go by SHA (EVALSHA). A Redis that forgot them (`SCRIPT FLUSH`, as after a
/// restart without the scripts) answers NOSCRIPT: each is loaded again and the call goes
/// through, so rate limiting, settling entries and the memory reading all carry on.
#[tokio::test]
async fn scripts_forgotten_by_redis_are_loaded_again() {
    let redis = RedisServer::start();
    let url = redis.url();
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--rate-limits", &format!("{SOURCE}=100000/100000")],
        redis_url: Some(&url),
        ..Default::default()
    })
    .await;
    p.ingest.post_ok(&batch("before", 5)).await;
    p.db.wait_rows(5).await;
    let loaded = redis_cli_out(redis.port, &["INFO", "memory"]);
    assert!(!loaded.contains("number_of_cached_scripts:0"), "{loaded}");
    assert_eq!(redis_cli_out(redis.port, &["SCRIPT", "FLUSH"]).trim(), "OK");
    let flushed = redis_cli_out(redis.port, &["INFO", "memory"]);
    assert!(flushed.contains("number_of_cached_scripts:0"), "{flushed}");
    p.ingest.post_ok(&batch("after", 5)).await;
    p.db.wait_rows(10).await;
    wait_stream_empty(&p.redis().await, &p.key).await;
    let again = redis_cli_out(redis.port, &["INFO", "memory"]);
    assert!(
        !again.contains("number_of_cached_scripts:0"),
        "loaded again: {again}"
    );
}

/// Migration 0003 on a populated table from before it: every row kept, the unique key led by
/// `time` (same columns, so a duplicate is still refused), the source index gone, the partial
/// index of corrected rows there; and `flusher migrate` says before it starts that writes wait,
/// with the table's size.
#[tokio::test]
async fn migration_0003_reorders_the_unique_key_keeps_every_row_and_warns_first() {
    let db = TestDb::empty(&shared_admin_url()).await;
    let client = db.client().await;
    client
        .batch_execute(concat!(
            include_str!("../../migrations/0001_events.sql"),
            include_str!("../../migrations/0002_device_time.sql"),
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version, name)
                 VALUES (1, '0001_events.sql'), (2, '0002_device_time.sql');
             INSERT INTO events (time, event_id, name, source, received_at, device_time)
             SELECT now() - i * interval '1 minute', gen_random_uuid(), 'n', 's', now(),
                    CASE WHEN i % 10 = 0 THEN now() - interval '1 year' END
             FROM generate_series(1, 20000) AS i;
             ANALYZE events;"
        ))
        .await
        .unwrap();
    let (ok, out) = migrate(&db.url);
    assert!(ok, "{out}");
    let warned = out
        .lines()
        .find(|l| l.contains("migration 0003_index_order.sql builds the unique index"))
        .unwrap_or_else(|| panic!("no warning before 0003:\n{out}"));
    assert!(warned.contains("writes to events wait"), "{warned}");
    assert!(warned.contains("about 20000 rows"), "{warned}");
    let indexes: Vec<(String, String)> = client
        .query(
            "SELECT indexname, indexdef FROM pg_indexes
             WHERE tablename = 'events' AND schemaname = current_schema() ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "events_corrected_idx",
            "events_name_time_idx",
            "events_time_event_id_key"
        ],
        "{indexes:?}"
    );
    assert!(
        indexes[2].1.contains("UNIQUE") && indexes[2].1.contains("(\"time\", event_id)"),
        "{indexes:?}"
    );
    assert!(
        indexes[0].1.contains("WHERE (device_time IS NOT NULL)"),
        "{indexes:?}"
    );
    assert_eq!(db.count().await, 20000);
    let duplicate = client
        .batch_execute(
            "INSERT INTO events (time, event_id, name, source, received_at)
             SELECT time, event_id, name, source, received_at FROM events LIMIT 1",
        )
        .await
        .unwrap_err();
    assert_eq!(
        duplicate.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{duplicate}"
    );
}

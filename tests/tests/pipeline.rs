//! The pipeline end to end: real ingest-api and flusher binaries, real Redis, real TimescaleDB.

use std::time::Duration;

use et_tests::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

/// 1,000 events in batches of 100 become 1,000 rows with every column as `docs/contract.md` says;
/// afterwards the stream is empty and nothing is pending.
#[tokio::test]
async fn a_thousand_events_become_a_thousand_rows() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let mut expected = Vec::new();
    // By a right clock: a `sent_at` further from the server's clock would correct the times.
    let sent_at = event_model::timestamp::format_timestamp(OffsetDateTime::now_utc());
    for b in 0..10 {
        let events: Vec<Value> = (b * 100..b * 100 + 100)
            .map(|n| contract_event(n, &mut expected))
            .collect();
        let (status, body) = p
            .ingest
            .post(&json!({"sent_at": sent_at, "events": events}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"accepted": 100, "rejected": []}));
    }
    p.db.wait_rows(1000).await;

    let client = p.db.client().await;
    let hyper: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'events')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hyper, "events must be a hypertable");
    assert_eq!(p.db.count().await, 1000);
    for (id, n, props) in expected.iter().step_by(37) {
        assert_row_as_contract_says(&client, id, *n, props, &sent_at).await;
    }

    let mut r = p.redis().await;
    wait_stream_empty(&r, &p.key).await;
    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
}

/// Event `n` of the contract test, with every field set (a `+02:00` timestamp, a session on odd
/// events only); its id, number and properties are added to `expected`.
fn contract_event(n: usize, expected: &mut Vec<(Uuid, usize, Value)>) -> Value {
    let id = Uuid::new_v4();
    let props = json!({"n": n, "nested": {"list": [1, "two", null, true]}, "s": "ünï"});
    expected.push((id, n, props.clone()));
    json!({
        "event_id": id.to_string(),
        "name": format!("event_{}", n % 5),
        // +02:00 on every event: stored as UTC, two hours earlier.
        "timestamp": format!("2026-01-02T{:02}:{:02}:{:02}.123456+02:00", 10 + n / 3600, (n / 60) % 60, n % 60),
        "device_id": format!("dev-{n}"),
        "session_id": if n.is_multiple_of(2) { Value::Null } else { json!("sess") },
        "user_id": format!("user-{}", n % 3),
        "properties": props,
    })
}

/// The row of [`contract_event`] `n` has every column as `docs/contract.md` says.
async fn assert_row_as_contract_says(
    client: &tokio_postgres::Client,
    id: &Uuid,
    n: usize,
    props: &Value,
    sent_at: &str,
) {
    let row = client
        .query_one(
            "SELECT time, name, source, device_id, session_id, user_id, properties = $2::jsonb,
                    sent_at, received_at, device_time
             FROM events WHERE event_id = $1",
            &[id, props],
        )
        .await
        .unwrap();
    let t: OffsetDateTime = row.get(0);
    let want = datetime!(2026-01-02 08:00:00.123456 UTC) + time::Duration::seconds(n as i64);
    assert_eq!(t, want, "time of event {n} in UTC");
    assert_eq!(row.get::<_, String>(1), format!("event_{}", n % 5));
    assert_eq!(row.get::<_, String>(2), SOURCE);
    assert_eq!(row.get::<_, Option<String>>(3), Some(format!("dev-{n}")));
    let session = (!n.is_multiple_of(2)).then(|| "sess".to_string());
    assert_eq!(row.get::<_, Option<String>>(4), session);
    assert_eq!(
        row.get::<_, Option<String>>(5),
        Some(format!("user-{}", n % 3))
    );
    assert!(
        row.get::<_, bool>(6),
        "properties of event {n} equal as jsonb"
    );
    let sent: OffsetDateTime = row.get(7);
    assert_eq!(
        Ok(sent),
        event_model::timestamp::parse_timestamp(sent_at),
        "sent_at"
    );
    assert_eq!(
        row.get::<_, Option<OffsetDateTime>>(9),
        None,
        "no device_time: not corrected"
    );
    let received: OffsetDateTime = row.get(8);
    let age = OffsetDateTime::now_utc() - received;
    assert!(
        age > time::Duration::ZERO && age < time::Duration::hours(1),
        "received_at {received}"
    );
}

/// A bare array body and the legacy `/test` path both land rows; server-assigned ids are UUIDv7.
#[tokio::test]
async fn bare_array_and_legacy_path() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let Pipeline { ingest, db, .. } = &p;

    let (status, body) = ingest
        .post(&json!([event("bare", 1), event("bare", 2)]))
        .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (200, json!(2)),
        "{body}"
    );
    let legacy = json!({"events": [{"name": "legacy", "timestamp": "2026-01-02T03:04:05Z"}]});
    let (status, body) = post_json(&format!("{}/test", ingest.url), Some(TOKEN), &legacy).await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (200, json!(1)),
        "{body}"
    );
    db.wait_rows(3).await;

    let row = db
        .client()
        .await
        .query_one(
            "SELECT event_id, properties::text, sent_at FROM events WHERE name = 'legacy'",
            &[],
        )
        .await
        .unwrap();
    let id: Uuid = row.get(0);
    assert_eq!(
        id.get_version_num(),
        7,
        "a server-assigned event_id is a UUIDv7"
    );
    assert_eq!(row.get::<_, String>(1), "{}");
    assert_eq!(row.get::<_, Option<OffsetDateTime>>(2), None);
}

/// Each validation rule: a mixed batch answers 200 with each bad event by index and field;
/// an all-bad batch answers 400 invalid_events listing every event.
#[tokio::test]
async fn validation_rules_answer_per_event() {
    let redis_url = shared_redis_url();
    let key = unique("events");
    let ingest = Ingest::start(&redis_url, &key, &[]);
    let now = OffsetDateTime::now_utc();
    let ts = event_model::timestamp::format_timestamp(now);
    let ok_deep = (0..32).fold(json!(1), |v, _| json!({"a": v}));
    let bad = invalid_events(now);
    let good = vec![
        json!({"name": "ok", "timestamp": ts}),
        json!({"name": "é".repeat(200), "timestamp": ts, "properties": ok_deep, "event_id": Uuid::new_v4().to_string().to_uppercase(), "device_id": null}),
    ];
    let mut events = good.clone();
    events.extend(bad.iter().map(|(e, _)| e.clone()));
    let (status, body) = ingest.post(&json!({"events": events})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], json!(2), "{body}");
    let rejected = body["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), bad.len(), "{body}");
    for (k, (_, field)) in bad.iter().enumerate() {
        assert_eq!(rejected[k]["index"], json!(k + good.len()), "{body}");
        let error = rejected[k]["error"].as_str().unwrap();
        assert!(
            error.starts_with(field),
            "event {}: {error:?} should name {field}",
            k + 2
        );
    }
    let mut r = redis_conn(&redis_url).await;
    assert_eq!(
        xlen(&mut r, &key).await,
        2,
        "only the valid events are queued"
    );

    let all_bad: Vec<Value> = bad.iter().map(|(e, _)| e.clone()).collect();
    let (status, body) = ingest.post(&json!(all_bad)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_events");
    assert_eq!(body["rejected"].as_array().unwrap().len(), bad.len());
    assert_eq!(xlen(&mut r, &key).await, 2, "nothing more queued");
}

/// One event breaking each validation rule, with the field its error must name.
fn invalid_events(now: OffsetDateTime) -> Vec<(Value, &'static str)> {
    let ts = event_model::timestamp::format_timestamp(now);
    let ahead = event_model::timestamp::format_timestamp(now + time::Duration::days(3));
    let deep = (0..33).fold(json!(1), |v, _| json!({"a": v}));
    let with = |field: &str, value: Value| {
        let mut e = json!({"name": "n", "timestamp": ts});
        e[field] = value;
        e
    };
    vec![
        (json!({"timestamp": ts}), "name:"),
        (json!({"name": "", "timestamp": ts}), "name:"),
        (json!({"name": "x".repeat(201), "timestamp": ts}), "name:"),
        (json!({"name": "a\u{0}b", "timestamp": ts}), "name:"),
        (json!({"name": 5, "timestamp": ts}), "name:"),
        (json!({"name": "n"}), "timestamp:"),
        (with("timestamp", json!("yesterday")), "timestamp:"),
        (
            with("timestamp", json!("2026-01-02T03:04:05+25:00")),
            "timestamp:",
        ),
        (
            with("timestamp", json!("1999-12-31T23:59:59Z")),
            "timestamp:",
        ),
        (with("timestamp", json!(ahead)), "timestamp:"),
        (with("event_id", json!("not-a-uuid")), "event_id:"),
        (with("device_id", json!("d".repeat(201))), "device_id:"),
        (with("session_id", json!(7)), "session_id:"),
        (with("user_id", json!("u\u{0}")), "user_id:"),
        (with("properties", json!([1])), "properties:"),
        (with("properties", deep), "properties:"),
        (with("properties", json!({"k\u{0}": 1})), "properties:"),
        (
            with("properties", json!({"a": [{"b": "v\u{0}"}]})),
            "properties:",
        ),
        (
            with("properties", json!({"big": "x".repeat(33 * 1024)})),
            "properties:",
        ),
        (with("colour", json!("red")), "colour:"),
        (json!("just a string"), "event:"),
    ]
}

/// Body-level errors: each with the status and code of `docs/contract.md`.
#[tokio::test]
async fn batch_level_errors() {
    let redis_url = shared_redis_url();
    let key = unique("events");
    let ingest = Ingest::start(&redis_url, &key, &["--max-events", "5"]);
    let url = format!("{}/v1/events", ingest.url);
    let client = http();
    let raw = |body: &'static str| authorised_json(&client, &url).body(body).send();
    for (body, status, code) in [
        ("{not json", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        (r#"{"events": [{"name": "x""#, 400, "invalid_json"),
        (
            r#"{"sent_at": "2026-01-01T00:00:00Z"}"#,
            400,
            "invalid_batch",
        ),
        ("42", 400, "invalid_batch"),
        (r#"{"events": [], "extra": 1}"#, 400, "invalid_batch"),
        (
            r#"{"events": [{}], "sent_at": "tuesday"}"#,
            400,
            "invalid_batch",
        ),
        (r#"{"events": []}"#, 400, "empty_batch"),
        ("[]", 400, "empty_batch"),
        ("[{},{},{},{},{},{}]", 413, "payload_too_large"),
    ] {
        let res = raw(body).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{body}");
        let json: Value = res.json().await.unwrap();
        assert_eq!(json["error"], code, "{body}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
    }
    // gzip: a valid gzip body is accepted, a broken one is invalid_gzip.
    let gzipped = gzip(json!([event("gz", 1)]).to_string().as_bytes());
    let gzip_post = |body: Vec<u8>| {
        authorised_json(&client, &url)
            .header("Content-Encoding", "gzip")
            .body(body)
            .send()
    };
    let res = gzip_post(gzipped.clone()).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let broken = gzipped[..gzipped.len() / 2].to_vec();
    let res = gzip_post(broken).await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_gzip");
}

/// A POST to `url` with the test token and a JSON content type.
fn authorised_json(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
}

/// `data` gzip-compressed.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// 401 for a missing, wrong or malformed token (with WWW-Authenticate), 415 for a wrong
/// content type or encoding; nothing is queued.
#[tokio::test]
async fn auth_and_media_type() {
    let redis_url = shared_redis_url();
    let key = unique("events");
    let ingest = Ingest::start(&redis_url, &key, &[]);
    let url = format!("{}/v1/events", ingest.url);
    let body = json!([event("auth", 1)]).to_string();
    let client = http();
    bad_tokens_answer_401(&client, &url, &body).await;
    // 401 comes before 415: a bad token with a bad content type is still 401.
    let res = client
        .post(&url)
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    bad_media_types_answer_415(&client, &url, &body).await;
    let res = client
        .post(&url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "Application/JSON; charset=utf-8")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "parameters are fine");
    let mut r = redis_conn(&redis_url).await;
    assert_eq!(
        xlen(&mut r, &key).await,
        1,
        "only the authorised, well-typed request queued"
    );
}

/// A missing, empty, wrong, malformed or non-Bearer token: 401 unauthorized with
/// `WWW-Authenticate: Bearer`.
async fn bad_tokens_answer_401(client: &reqwest::Client, url: &str, body: &str) {
    let long = format!("Bearer {}", "x".repeat(10_000));
    let off_by_one = format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]);
    let auth_cases: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong-token"),
        Some(&off_by_one),
        Some("Basic dGVzdDp0ZXN0"),
        Some(TOKEN),
        Some(&long),
    ];
    for auth in auth_cases {
        let mut req = client
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
        assert_eq!(
            res.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "unauthorized");
    }
}

/// With a good token, a missing or wrong content type or an unsupported encoding: 415
/// unsupported_media_type.
async fn bad_media_types_answer_415(client: &reqwest::Client, url: &str, body: &str) {
    let content_cases: Vec<(Option<&str>, Option<&str>)> = vec![
        (None, None),
        (Some("text/plain"), None),
        (Some("application/x-www-form-urlencoded"), None),
        (Some("application/json"), Some("br")),
        (Some("application/json"), Some("zstd")),
        (Some("application/json"), Some("deflate")),
        (Some("application/json"), Some("gzip, gzip")),
    ];
    for (ct, ce) in content_cases {
        let mut req = client
            .post(url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(body.to_string());
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        if let Some(ce) = ce {
            req = req.header("Content-Encoding", ce);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 415, "{ct:?} {ce:?}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"],
            "unsupported_media_type"
        );
    }
}

/// Redis stopped: POST 503 with Retry-After, /readyz 503; Redis back: both recover without a
/// restart. Redis frozen (SIGSTOP): POST answers 503 instead of hanging. Redis of its own.
#[tokio::test]
async fn redis_down_or_frozen_gives_503_and_recovers() {
    let mut redis = RedisServer::start();
    let key = unique("events");
    let ingest = Ingest::start(
        &redis.url(),
        &key,
        &["--redis-timeout-ms", "500", "--retry-after-secs", "3"],
    );
    let ready = || get_status(&ingest.url, "/readyz");
    assert_eq!(ready().await, 200);
    let before = event("before", 0);
    ingest.post_ok(&json!([before])).await;

    redis.kill();
    assert!(!redis.is_up());
    let res = ingest.send(&json!([event("down", 1)])).await;
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers().get("retry-after").unwrap(), "3");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "queue_unavailable"
    );
    assert_eq!(ready().await, 503);
    assert_eq!(
        get_status(&ingest.url, "/healthz").await,
        200,
        "liveness does not depend on Redis"
    );

    redis.restart();
    wait_accepting(&ingest, "after").await;
    assert_eq!(ready().await, 200);
    // Looked up by its event_id: a retried write cannot stand in for the kept one.
    let id = before["event_id"].as_str().unwrap();
    let entries = entry_fields(&redis.url(), &key).await;
    assert!(
        entries.iter().any(|f| f.contains(id)),
        "AOF kept the event from before the crash: {entries:?}"
    );

    // Frozen: the request must come back as 503, not hang until the client gives up (30 s).
    redis.freeze();
    let (status, body) = ingest.post(&json!([event("frozen", 3)])).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "queue_unavailable");
    assert_eq!(ready().await, 503);
    redis.thaw();
    wait_accepting(&ingest, "thawed").await;
}

/// Waits (30 s at most) until ingest-api takes an event named `name` again.
async fn wait_accepting(ingest: &Ingest, name: &str) {
    let what = format!("ingest-api to recover ({name})");
    wait_for(&what, Duration::from_secs(30), || async {
        let (status, _) = ingest.post(&json!([event(name, 2)])).await;
        (status == 200).then_some(())
    })
    .await;
}

/// The status of `GET {base}{path}`.
async fn get_status(base: &str, path: &str) -> u16 {
    let res = http().get(format!("{base}{path}")).send().await.unwrap();
    res.status().as_u16()
}

/// The field values of every entry of a stream.
async fn entry_fields(redis_url: &str, key: &str) -> Vec<String> {
    let mut r = redis_conn(redis_url).await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    entries
        .into_iter()
        .flat_map(|(_, f)| f.into_values())
        .collect()
}

/// Two flushers on one stream: every event is written exactly once, and both wrote some.
#[tokio::test]
async fn two_flushers_share_the_work() {
    let p = Pipeline::start(PipelineOptions {
        flushers: 0,
        ..Default::default()
    })
    .await;
    let mut a = p.start_flusher(&["--batch-size", "10", "--consumer", "a"], &[]);
    let mut b = p.start_flusher(&["--batch-size", "10", "--consumer", "b"], &[]);
    wait_reading(&[&a, &b]).await;
    let total = 3000;
    for chunk in 0..total / 100 {
        let events: Vec<Value> = (0..100).map(|i| event("shared", chunk * 100 + i)).collect();
        let (status, body) = p.ingest.post(&json!(events)).await;
        assert_eq!(status, 200, "{body}");
    }
    p.db.wait_rows(total as i64).await;
    let mut r = p.redis().await;
    wait_stream_empty(&r, &p.key).await;
    let (wa, wb) = (written_by(&[&a]).await, written_by(&[&b]).await);
    assert!(
        wa > 0.0 && wb > 0.0,
        "both flushers wrote, by their metrics: a={wa} b={wb}"
    );
    assert_eq!(wa + wb, total as f64, "the pipeline wrote each event once");
    assert_eq!(dedup_batches(&a).await, 0.0);
    assert_eq!(dedup_batches(&b).await, 0.0);
    assert!(a.proc.terminate().success());
    assert!(b.proc.terminate().success());
    let distinct: i64 =
        p.db.client()
            .await
            .query_one("SELECT count(DISTINCT event_id) FROM events", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!((p.db.count().await, distinct), (total as i64, total as i64));
    assert_eq!(xlen(&mut r, &p.key).await, 0);
    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
}

/// Waits until every flusher is about to read. A blocked XREADGROUP creates no consumer in
/// Redis 7.0, so this waits for what comes right before the workers' reads: each flusher's
/// queue gauges (published once its shard count is checked, as its workers start).
async fn wait_reading(flushers: &[&Flusher]) {
    let urls: Vec<String> = flushers.iter().map(|f| f.metrics_url()).collect();
    wait_for("every flusher's drain loop started", LONG, || async {
        for u in &urls {
            metric(u, "eventtracker_queue_backlog").await?;
        }
        Some(())
    })
    .await;
}

/// Two `flusher migrate` runs started at the same moment both succeed and leave one schema.
#[tokio::test]
async fn concurrent_migrations_leave_one_schema() {
    let db = TestDb::empty(&shared_admin_url()).await;
    let url = db.url.clone();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrate(&url))
        })
        .collect();
    for run in runs {
        let (ok, out) = run.join().unwrap();
        assert!(ok, "migrate failed:\n{out}");
    }
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count() as i32;
    assert_eq!(
        versions,
        (1..=files).collect::<Vec<i32>>(),
        "each migration once"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    // A third run is a no-op.
    let (ok, out) = migrate(&url);
    assert!(ok && out.contains("up to date"), "{out}");
}

/// A consumer idle past --consumer-idle-secs with nothing pending is removed from the group.
#[tokio::test]
async fn idle_consumers_are_pruned() {
    let redis_url = shared_redis_url();
    let key = unique("events");
    let db = TestDb::migrated(&shared_admin_url()).await;
    let mut r = redis_conn(&redis_url).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("flushers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&key)
        .arg("flushers")
        .arg("ghost")
        .query_async(&mut r)
        .await
        .unwrap();
    let flusher = Flusher::start(
        &redis_url,
        &db.url,
        &key,
        &["--consumer-idle-secs", "0"],
        &[],
    );
    wait_for(
        "the ghost consumer to be removed",
        Duration::from_secs(30),
        || {
            let mut r = r.clone();
            let key = key.clone();
            async move {
                let v: redis::Value = redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&key)
                    .arg("flushers")
                    .query_async(&mut r)
                    .await
                    .unwrap();
                (!format!("{v:?}").contains("ghost")).then_some(())
            }
        },
    )
    .await;
    assert!(
        flusher
            .proc
            .log_text()
            .contains("removed idle consumer ghost")
    );
}

/// The paths (`$.info.version`) at which two JSON documents differ, with both values when short.
fn json_differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                json_differences(l, r, &format!("{at}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                json_differences(l, r, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => {
            let short = |v: &Value| v.to_string().chars().take(80).collect::<String>();
            out.push(format!("{at}: {} vs {}", short(a), short(b)));
        }
        _ => {}
    }
}

/// `GET /openapi.json` serves docs/openapi.yaml as JSON (the whole document, parsed and compared
/// as JSON values), and it describes every endpoint.
#[tokio::test]
async fn openapi_description_is_served() {
    let ingest = Ingest::start(&shared_redis_url(), &unique("events"), &[]);
    let res = http()
        .get(format!("{}/openapi.json", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let served: Value = res.json().await.unwrap();
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .unwrap();
    let on_disk: Value = serde_norway::from_str(&yaml).expect("docs/openapi.yaml is valid YAML");
    let mut differences = Vec::new();
    json_differences(&served, &on_disk, "$", &mut differences);
    assert!(
        differences.is_empty(),
        "GET /openapi.json differs from docs/openapi.yaml (rebuild ingest-api?) at {differences:?}"
    );
    assert_eq!(served["openapi"], "3.0.3");
    for path in [
        "/v1/events",
        "/test",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is described");
    }
}

/// One flusher with `--concurrency 3` keeps three batches in flight and still writes every
/// event exactly once (no de-duplication needed, nothing pending afterwards).
#[tokio::test]
async fn concurrent_batches_in_one_flusher() {
    let p = Pipeline::start(PipelineOptions {
        flushers: 0,
        ..Default::default()
    })
    .await;
    let mut flusher = p.start_flusher(
        &[
            "--concurrency",
            "3",
            "--batch-size",
            "10",
            // One read per COPY: a backlog is otherwise written up to 3000 rows at a time.
            "--max-copy-rows",
            "10",
            "--consumer",
            "multi",
        ],
        &[],
    );
    // The table locked: each worker reads a batch and waits on its COPY, reading the next
    // batch meanwhile (read ahead), so the group shows what is in flight at once: a batch of 10
    // in a COPY and the next 10 pending with each of the three readers.
    let lock = p.db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for chunk in 0..20 {
        let events: Vec<Value> = (0..100).map(|i| event("multi", chunk * 100 + i)).collect();
        let (status, _) = p.ingest.post(&json!(events)).await;
        assert_eq!(status, 200);
    }
    let mut r = p.redis().await;
    let want: Vec<(String, u64)> = (0..3).map(|n| (format!("multi-{n}"), 20)).collect();
    wait_for("three batches in flight at once", LONG, || {
        let (mut r, key, want) = (r.clone(), p.key.clone(), want.clone());
        async move {
            let mut held = pending_once_grouped(&mut r, &key, "flushers").await?;
            held.sort();
            (held == want).then_some(())
        }
    })
    .await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    p.db.wait_rows(2000).await;
    wait_stream_empty(&r, &p.key).await;
    assert_eq!(written_by(&[&flusher]).await, 2000.0);
    assert_eq!(dedup_batches(&flusher).await, 0.0);
    assert!(flusher.proc.terminate().success());

    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
    assert_eq!(p.db.count().await, 2000);
}

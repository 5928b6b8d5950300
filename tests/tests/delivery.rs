//! Nothing lost, nothing twice: each test injects a fault, proves it happened, and checks that
//! every accepted event is stored exactly once.

use std::process::Command;
use std::time::Duration;

use et_tests::*;
use serde_json::{Value, json};

async fn distinct_ids(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(DISTINCT (event_id, time)) FROM events", &[])
        .await
        .unwrap()
        .get(0)
}

/// A flusher killed after COMMIT and before XACK leaves its rows committed and its entries
/// pending; another flusher claims them, takes the de-duplication path, and nothing is doubled.
#[tokio::test]
async fn crash_after_commit_before_ack_is_deduplicated() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let (status, _) = ingest.post(&batch("crash", 100)).await;
    assert_eq!(status, 200);

    let mut doomed = p.start_flusher(
        &["--consumer", "doomed"],
        &[("ET_FAULT_EXIT_AFTER_COMMIT", "1")],
    );
    let status = doomed.proc.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(86), "the fault hook fired");
    assert!(
        doomed
            .proc
            .log_text()
            .contains("fault hook: exiting after COMMIT")
    );
    // The fault really happened at that instant: rows committed, entries still pending.
    assert_eq!(db.count().await, 100, "the batch was committed");
    let mut r = p.redis().await;
    assert_eq!(
        pending(&mut r, key, "flushers").await,
        100,
        "and not acknowledged"
    );
    assert_eq!(xlen(&mut r, key).await, 100);

    let mut rescuer = p.start_flusher(&["--consumer", "rescuer", "--claim-idle-ms", "500"], &[]);
    wait_stream_empty(&r, key).await;
    // What the rescuer did, from its own counters: it claimed the 100 entries and wrote them
    // through the de-duplication path, which found every row already there.
    let page = scrape(&rescuer.metrics_url()).await;
    assert_eq!(
        metric_in(&page, "eventtracker_flusher_claimed_total"),
        Some(100.0)
    );
    assert!(
        dedup_batches(&rescuer).await > 0.0,
        "the de-duplication path ran"
    );
    assert!(rescuer.proc.terminate().success());
    assert_eq!(db.count().await, 100, "no row duplicated");
    assert_eq!(distinct_ids(db).await, 100);
    assert_eq!(pending(&mut r, key, "flushers").await, 0);
}

/// One undecodable entry and one row PostgreSQL refuses, among 98 good ones: 98 rows and two
/// dead letters with their reasons; after the cause is fixed, `dead-letters requeue` stores it.
#[tokio::test]
async fn poison_entries_are_dead_lettered_and_requeued() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    db.set_poison_check(true).await;
    let mut events: Vec<Value> = (0..98).map(|i| event("good", i)).collect();
    events.insert(41, event("poison", 0));
    let (status, body) = ingest.post(&json!(events)).await;
    assert_eq!((status, body["accepted"].clone()), (200, json!(99)));
    let mut r = p.redis().await;
    let garbage_id = queue_garbage(&mut r, key).await;

    let mut flusher = p.start_flusher(&[], &[]);
    let dead_key = format!("{key}:dead");
    wait_for("two dead letters", LONG, || {
        let mut r = r.clone();
        let dead_key = dead_key.clone();
        async move { (xlen(&mut r, &dead_key).await == 2).then_some(()) }
    })
    .await;
    db.wait_rows(98).await;
    // Counted just after the move: wait for the count, then it must be exactly two.
    let counted = wait_for("the flusher to count its dead letters", LONG, || async {
        let n = dead_lettered_by(&flusher).await;
        (n >= 2.0).then_some(n)
    })
    .await;
    assert_eq!(counted, 2.0);
    assert!(flusher.proc.terminate().success());
    assert_eq!(db.count().await, 98);
    assert_eq!(
        xlen(&mut r, key).await,
        0,
        "bad entries left the main stream"
    );

    let refused_id = the_two_dead_letters_listed(&p, &garbage_id);

    // Fix the cause, replay the refused one, and it is stored.
    db.set_poison_check(false).await;
    let out = dead_letters(&p, &["requeue", &refused_id]);
    assert!(out.contains("requeued 1"), "{out}");
    assert_eq!(xlen(&mut r, &dead_key).await, 1);
    let _flusher = p.start_flusher(&[], &[]);
    db.wait_rows(99).await;
    let poison: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE name = 'poison'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(poison, 1);
    let out = dead_letters(&p, &["purge", "--all"]);
    assert!(out.contains("purged 1"), "{out}");
    assert_eq!(xlen(&mut r, &dead_key).await, 0);
}

/// An entry in exactly the form ingest-api writes whose properties are not JSON (a producer
/// that bypasses ingest-api): the flusher's scanner does not validate properties, PostgreSQL
/// refuses the `jsonb`, and only that row is dead-lettered, with PostgreSQL's SQLSTATE.
#[tokio::test]
async fn properties_postgresql_cannot_parse_are_dead_lettered_alone() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let events: Vec<Value> = (0..99).map(|i| event("good", i)).collect();
    let (status, body) = ingest.post(&json!(events)).await;
    assert_eq!((status, body["accepted"].clone()), (200, json!(99)));
    let mut r = p.redis().await;
    let bad = r#"{"t":1767323045123456,"id":"0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f","n":"bad","s":"test","p":{"a":tru},"ra":1767323047000001}"#;
    let bad_id: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("e")
        .arg(bad)
        .query_async(&mut r)
        .await
        .unwrap();

    let mut flusher = p.start_flusher(&[], &[]);
    db.wait_rows(99).await;
    wait_stream_empty(&r, key).await;
    assert!(flusher.proc.terminate().success());
    assert_eq!(db.count().await, 99);
    let listed: Vec<Value> = dead_letters(&p, &["list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["original_id"], json!(bad_id));
    assert_eq!(listed[0]["sqlstate"], json!("22P02"), "{listed:?}");
}

/// `dead-letters list` shows exactly two: the undecodable entry (by its original ID) and the
/// row PostgreSQL refused, with its SQLSTATE, the constraint and the event. The latter's ID.
fn the_two_dead_letters_listed(p: &Pipeline, garbage_id: &str) -> String {
    let listed: Vec<Value> = dead_letters(p, &["list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    let undecodable = listed
        .iter()
        .find(|d| d["original_id"] == json!(garbage_id))
        .expect("the undecodable entry");
    let reason = undecodable["reason"].as_str().unwrap();
    assert!(reason.contains("undecodable"), "{undecodable}");
    let refused = listed
        .iter()
        .find(|d| d["sqlstate"] == json!("23514"))
        .expect("the refused row, with its SQLSTATE");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("no_poison"), "{refused}");
    assert_eq!(refused["event"]["n"], json!("poison"));
    refused["id"].as_str().unwrap().to_string()
}

/// Queues an entry that is not an event (as a buggy producer might); its stream ID.
async fn queue_garbage(r: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("e")
        .arg("{this is not an event")
        .query_async(r)
        .await
        .unwrap()
}

/// Runs `flusher dead-letters ARGS…` on the pipeline's queue; fails unless it succeeds, gives
/// its standard output.
fn dead_letters(p: &Pipeline, args: &[&str]) -> String {
    let out = Command::new(bin("flusher"))
        .args(["--redis-url", &p.redis_url, "--stream-key", &p.key])
        .arg("dead-letters")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// PostgreSQL stopped for 10 s under load: the flusher backs off, nothing is lost, writing
/// resumes by itself. PostgreSQL of its own.
#[tokio::test]
async fn postgres_down_for_ten_seconds_under_load() {
    let pg = PgServer::start();
    let p = Pipeline::start(PipelineOptions {
        admin_url: Some(&pg.admin_url()),
        flusher: &["--batch-size", "50"],
        ..Default::default()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);

    let mut accepted = 0i64;
    for _ in 0..5 {
        let (status, body) = ingest.post(&batch("before", 100)).await;
        assert_eq!(status, 200, "{body}");
        accepted += 100;
    }
    db.wait_rows(accepted).await;
    pg.stop();
    let down_at = std::time::Instant::now();
    // Keep the load on while PostgreSQL is down: ingest does not depend on it.
    while down_at.elapsed() < Duration::from_secs(10) {
        let (status, body) = ingest.post(&batch("during", 100)).await;
        assert_eq!(status, 200, "{body}");
        accepted += 100;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut r = p.redis().await;
    assert!(
        xlen(&mut r, key).await > 0,
        "entries waited in Redis while PostgreSQL was down"
    );
    pg.start_server();
    assert!(
        pg.log_text().contains("immediate shutdown"),
        "PostgreSQL really went down:\n{}",
        pg.log_text()
    );
    db.wait_rows(accepted).await;
    assert_eq!(db.count().await, accepted);
    assert_eq!(distinct_ids(db).await, accepted);
    assert!(
        flusher_count(&p.flushers[0], "postgres_errors").await > 0.0,
        "the flusher's writes failed while PostgreSQL was down"
    );
    wait_stream_empty(&r, key).await;
}

/// Redis crashes (SIGKILL) with entries queued and is restarted: AOF `always` kept every
/// accepted event, the flusher reconnects, and each is stored once. Redis of its own.
#[tokio::test]
async fn redis_crash_and_restart_loses_nothing() {
    let mut redis = RedisServer::start();
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&redis.url()),
        ingest: &["--redis-timeout-ms", "500"],
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let (status, _) = ingest.post(&batch("queued", 300)).await;
    assert_eq!(status, 200);
    // Kill Redis before any flusher ran: all 300 exist only in Redis.
    redis.kill();
    let (status, body) = ingest.post(&batch("refused", 10)).await;
    assert_eq!(status, 503, "Redis is really down: {body}");
    redis.restart();
    let flusher = p.start_flusher(&["--claim-idle-ms", "2000"], &[]);
    db.wait_rows(300).await;
    // And a crash with the flusher running, mid-stream.
    let (status, _) = ingest.post(&batch("second", 200)).await;
    assert_eq!(status, 200);
    redis.kill();
    redis.restart();
    wait_for("ingest-api to recover", Duration::from_secs(30), || async {
        let (status, _) = ingest.post(&batch("third", 100)).await;
        (status == 200).then_some(())
    })
    .await;
    db.wait_rows(600).await;
    assert_eq!(db.count().await, 600);
    assert_eq!(distinct_ids(db).await, 600);
    assert!(
        flusher_count(&flusher, "redis_errors").await > 0.0,
        "the flusher saw Redis go away"
    );
    let r = p.redis().await;
    wait_for("nothing pending", LONG, || {
        let mut r = r.clone();
        async move {
            (xlen(&mut r, key).await == 0 && pending(&mut r, key, "flushers").await == 0)
                .then_some(())
        }
    })
    .await;
}

/// A stream longer than --max-queue-len answers 503 queue_full with Retry-After; once the
/// flusher drains it, requests are accepted again.
#[tokio::test]
async fn backpressure_when_the_queue_is_full() {
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--max-queue-len", "150", "--retry-after-secs", "2"],
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    for _ in 0..2 {
        let (status, _) = ingest.post(&batch("fill", 100)).await;
        assert_eq!(status, 200);
    }
    // Until the cached length catches up (it is refreshed in the background), requests pass.
    let extra = std::cell::Cell::new(0u64);
    let res = wait_for("queue_full", Duration::from_secs(30), || async {
        let res = ingest.send(&batch("over", 1)).await;
        if res.status().as_u16() == 200 {
            extra.set(extra.get() + 1);
        }
        (res.status().as_u16() == 503).then_some(res)
    })
    .await;
    assert_eq!(res.headers().get("retry-after").unwrap(), "2");
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "queue_full");
    let mut r = p.redis().await;
    assert_eq!(
        xlen(&mut r, key).await,
        200 + extra.get(),
        "the refused batch was not queued, nothing trimmed"
    );

    let _flusher = p.start_flusher(&[], &[]);
    wait_for("200 again after the drain", LONG, || async {
        let (status, _) = ingest.post(&batch("after", 1)).await;
        (status == 200).then_some(())
    })
    .await;
    db.wait_rows(201 + extra.get() as i64).await;
}

/// SIGTERM during load: both binaries exit 0; the flusher acknowledges what it wrote (nothing
/// is left pending), and a later flusher stores the rest exactly once.
#[tokio::test]
async fn sigterm_during_load_loses_nothing() {
    let mut p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let mut flusher = p.start_flusher(&["--batch-size", "20"], &[]);
    let url = p.ingest.url.clone();
    let load = tokio::spawn(async move {
        // ingest-api runs until the load is over: anything but a 200 is a failure.
        let mut accepted = 0;
        for i in 0..40 {
            let (status, body) = post_json(
                &format!("{url}/v1/events"),
                Some(TOKEN),
                &batch("load", 100),
            )
            .await;
            assert_eq!(status, 200, "request {i}: {body}");
            accepted += body["accepted"].as_i64().unwrap();
        }
        accepted
    });
    p.db.wait_rows(200).await;
    let status = flusher.proc.terminate();
    assert!(status.success(), "flusher exit: {status:?}");
    assert!(flusher.proc.log_text().contains("stopped: written="));
    let mut r = p.redis().await;
    assert_eq!(
        pending(&mut r, &p.key, "flushers").await,
        0,
        "the stopping flusher acknowledged its batch"
    );
    let accepted = load.await.unwrap();
    let status = p.ingest.proc.terminate();
    assert!(status.success(), "ingest-api exit: {status:?}");
    let _next = p.start_flusher(&[], &[]);
    p.db.wait_rows(accepted).await;
    assert_eq!(p.db.count().await, accepted);
    assert_eq!(distinct_ids(&p.db).await, accepted);
}

/// An entry delivered more than --max-deliveries times is retried alone, and stored, not
/// dead-lettered, when nothing is wrong with its data: delivery counts alone condemn nothing.
#[tokio::test]
async fn often_delivered_entries_are_retried_alone_not_condemned() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let mut r = five_worn_entries(&p, "worn").await;

    let mut flusher = p.start_flusher(&["--claim-idle-ms", "1000", "--max-deliveries", "10"], &[]);
    let log = stored_then_stopped(&p, &r, &mut flusher, 5).await;
    assert!(
        log.contains("retrying 5 entries delivered more than 10 times one at a time"),
        "{log}"
    );
    // Each entry is written in a batch of its own. Timing may add batches, each of one entry
    // and each through de-duplication: a COPY slower than --pg-timeout-ms (500 ms here) is
    // retried that way, as its outcome is unknown; a batch slower than the claim idle lets the
    // other worker claim an entry still waiting its turn and write it again. So at most one
    // plain COPY a row, and at least one batch a row. The counts are the final ones the
    // flusher logs when it stops, when no write is left in flight.
    let count = |name: &str| stopped_count(&log, name);
    let (written, batches) = (count("written"), count("batches"));
    let plain = batches - count("dedup_batches");
    assert!(plain <= 5, "{plain} plain COPYs for 5 rows\n{log}");
    assert!(batches >= 5, "{batches} batches for 5 rows\n{log}");
    assert_eq!(written, batches, "every batch held one entry\n{log}");
    assert_eq!(count("dead_lettered"), 0, "{log}");
    assert_eq!(xlen(&mut r, &format!("{}:dead", p.key)).await, 0);
    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
}

/// Entries waiting their turn to be retried alone stay claimed while the one ahead of them
/// waits for PostgreSQL: no other worker takes them over and writes them a second time.
#[tokio::test]
async fn entries_waiting_to_be_retried_alone_stay_claimed_while_postgres_is_slow() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let r = five_worn_entries(&p, "queued").await;
    // Writes wait on this lock for 3 s: each attempt times out after 200 ms and backs off.
    let lock = lock_events(&p.db).await;
    let mut flusher = p.start_flusher(
        &[
            "--claim-idle-ms",
            "1000",
            "--pg-timeout-ms",
            "200",
            "--max-deliveries",
            "10",
        ],
        &[],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    lock.batch_execute("COMMIT").await.unwrap();
    let log = stored_then_stopped(&p, &r, &mut flusher, 5).await;
    assert!(
        log.contains("PostgreSQL failed"),
        "the writes did wait\n{log}"
    );
    let count = |name: &str| stopped_count(&log, name);
    assert_eq!(count("claimed"), 5, "claimed once, from the ghost\n{log}");
    assert_eq!(count("dedup_batches"), 0, "no entry written twice\n{log}");
    assert_eq!(count("written"), 5, "{log}");
}

/// A write that waits on PostgreSQL for longer than a third of `--claim-idle-ms` does not let
/// its entries' claim age meanwhile: the claim is refreshed during the write, not only between
/// attempts (one attempt may take three `--pg-timeout-ms`: a connection, the COPY, the
/// de-duplicating write).
#[tokio::test]
async fn a_slow_write_keeps_its_entries_claimed_while_it_waits() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let lock = lock_events(&p.db).await;
    // Refreshed every 500 ms; each attempt waits 1200 ms on the lock before it times out.
    let args = ["--claim-idle-ms", "1500", "--pg-timeout-ms", "1200"];
    let mut flusher = p.start_flusher(&args, &[]);
    let (status, _) = p.ingest.post(&batch("waiting", 5)).await;
    assert_eq!(status, 200);
    let mut r = p.redis().await;
    let mut oldest = 0;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        oldest = oldest.max(max_pending_idle_ms(&mut r, &p.key).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.batch_execute("COMMIT").await.unwrap();
    let log = stored_then_stopped(&p, &r, &mut flusher, 5).await;
    assert!(
        log.contains("took longer than 1200 ms"),
        "the writes did wait\n{log}"
    );
    assert!(
        oldest < 900,
        "an entry in hand went {oldest} ms without its claim refreshed (every 500 ms)\n{log}"
    );
}

/// The longest idle time (ms) of any entry pending in the group `flushers` of `key`.
async fn max_pending_idle_ms(r: &mut MultiplexedConnection, key: &str) -> u64 {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg("flushers")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(r)
        .await
        .unwrap_or_default();
    rows.iter().map(|(_, _, idle, _)| *idle).max().unwrap_or(0)
}

/// A connection holding a SHARE lock on `events`: every write waits until it sends `COMMIT`.
async fn lock_events(db: &TestDb) -> tokio_postgres::Client {
    let lock = db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    lock
}

/// Waits until `rows` rows are stored and the stream is empty, then stops the flusher (it
/// must exit 0) and returns its log.
async fn stored_then_stopped(
    p: &Pipeline,
    r: &MultiplexedConnection,
    flusher: &mut Flusher,
    rows: i64,
) -> String {
    p.db.wait_rows(rows).await;
    wait_stream_empty(r, &p.key).await;
    assert!(flusher.proc.terminate().success());
    flusher.proc.log_text()
}

/// `name=N` of the line a flusher logs when it stops (`flusher … stopped: written=… batches=…`).
fn stopped_count(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(" stopped: written="))
        .unwrap_or_else(|| panic!("no 'stopped' line in\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

/// Queues 5 events named `name` that a crashed consumer read and that have been claimed 20
/// times since; returns a Redis connection for checks.
async fn five_worn_entries(p: &Pipeline, name: &str) -> MultiplexedConnection {
    let (status, _) = p.ingest.post(&batch(name, 5)).await;
    assert_eq!(status, 200);
    let mut r = p.redis().await;
    deliver_to_a_ghost(&mut r, &p.key, 20).await;
    r
}

/// Every entry of the stream read by a consumer `ghost` and delivered `times` times (XCLAIM
/// RETRYCOUNT), as if claimed over and over after a crash; checks that XPENDING says so.
async fn deliver_to_a_ghost(r: &mut MultiplexedConnection, key: &str, times: i64) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("flushers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(r)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("flushers")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(r)
        .await
        .unwrap();
    let ids: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .unwrap();
    let ids: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(key)
        .arg("flushers")
        .arg("ghost")
        .arg(0)
        .arg(&ids)
        .arg("RETRYCOUNT")
        .arg(times)
        .arg("JUSTID")
        .query_async(r)
        .await
        .unwrap();
    let counts: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg("flushers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(r)
        .await
        .unwrap();
    assert!(
        counts.iter().all(|c| c.3 == times),
        "the entries really were delivered {times} times: {counts:?}"
    );
}

/// Redis frozen (SIGSTOP) under a running pipeline: ingest-api answers 503 instead of hanging,
/// the flusher's calls time out instead of hanging; after SIGCONT everything flows again and
/// every accepted event is stored once. Redis of its own.
#[tokio::test]
async fn redis_frozen_then_thawed_everything_flows() {
    let redis = RedisServer::start();
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&redis.url()),
        ingest: &["--redis-timeout-ms", "500"],
        flusher: &["--redis-timeout-ms", "500", "--claim-idle-ms", "2000"],
        ..Default::default()
    })
    .await;
    let (ingest, db, flusher) = (&p.ingest, &p.db, &p.flushers[0]);
    ingest.post_ok(&batch("before", 100)).await;
    db.wait_rows(100).await;

    redis.freeze();
    let frozen_batch = batch("frozen", 10);
    let (status, body) = ingest.post(&frozen_batch).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("queue_unavailable"))
    );
    // The flusher notices too (its blocking read and other calls time out), and keeps going.
    wait_for("the flusher to notice", LONG, || async {
        (flusher_count(flusher, "redis_errors").await > 0.0).then_some(())
    })
    .await;
    redis.thaw();

    let mut accepted = 100;
    wait_for("ingest-api to accept again", LONG, || async {
        let (status, _) = ingest.post(&batch("thawed", 50)).await;
        (status == 200).then_some(())
    })
    .await;
    accepted += 50;
    // `docs/contract.md`'s case of a lost reply: the MULTI/EXEC sent to the frozen Redis sat in its
    // socket and may run on SIGCONT, although the client got 503. The client retries the same
    // batch (same event_ids), as an SDK must, and each event is stored once either way.
    ingest.post_ok(&frozen_batch).await;
    accepted += 10;
    for _ in 0..3 {
        ingest.post_ok(&batch("after", 100)).await;
        accepted += 100;
    }
    db.wait_rows(accepted).await;
    let mut r = p.redis().await;
    wait_stream_empty(&r, &p.key).await;
    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
    assert_eq!(
        db.count().await,
        accepted,
        "every event once, the retried batch included"
    );
    assert_eq!(distinct_ids(db).await, accepted);
    // The fault happened: the frozen MULTI ran on SIGCONT, so the retried batch's 10 events
    // were queued twice, the flusher wrote 10 more than ingest-api accepted, and the second
    // copies went through the de-duplication path.
    assert_eq!(accepted_by(ingest).await, accepted as f64);
    assert_eq!(written_by(&[flusher]).await, (accepted + 10) as f64);
    assert!(dedup_batches(flusher).await > 0.0, "the de-dup path ran");
}

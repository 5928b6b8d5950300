//! Under a backlog one COPY carries several reads (`--max-copy-rows`), and what a COPY of
//! several reads meets — a row PostgreSQL refuses, a row stored already — is handled as in a
//! single read: the rest stored, one dead letter, no duplicate row.

use et_tests::*;
use serde_json::{Value, json};

/// 500 events queued before the flusher starts (5 reads of 100).
async fn backlog(ingest: &Ingest, name: &str) {
    for _ in 0..5 {
        let events: Vec<Value> = (0..100).map(|i| event(name, i)).collect();
        assert_eq!(ingest.post(&json!(events)).await.0, 200);
    }
}

async fn copy_batches(flusher: &Flusher) -> f64 {
    let page = scrape(&flusher.metrics_url()).await;
    labelled_in(
        &page,
        "eventtracker_flusher_batches_written_total",
        "path=\"copy\"",
    )
    .expect("the batches counter")
}

#[tokio::test]
async fn a_backlog_of_five_reads_is_one_copy() {
    // One worker, so that the five reads are all its own.
    let one = ["--concurrency", "1"];
    for (flags, copies) in [
        (&one[..], 1.0),
        (&[&one[..], &["--max-copy-rows", "100"]].concat()[..], 5.0),
    ] {
        let p = Pipeline::start(PipelineOptions::without_flushers()).await;
        let db = &p.db;
        backlog(&p.ingest, "backlog").await;
        let flusher = p.start_flusher(flags, &[]);
        db.wait_rows(500).await;
        wait_stream_empty(&p.redis().await, &p.key).await;
        assert_eq!(copy_batches(&flusher).await, copies, "{flags:?}");
        assert_eq!(db.rows_and_distinct().await, (500, 500));
    }
}

#[tokio::test]
async fn a_bad_row_and_a_duplicate_in_a_copy_of_several_reads() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.name = 'bad' THEN RAISE EXCEPTION 'bad row' USING ERRCODE = '22023'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_bad BEFORE INSERT ON events
               FOR EACH ROW EXECUTE FUNCTION refuse_bad();",
        )
        .await
        .unwrap();
    backlog(ingest, "many").await;
    // A sixth read's worth, with a bad row and a row stored already.
    let mut tail: Vec<Value> = (0..100).map(|i| event("many", i)).collect();
    tail[42]["name"] = json!("bad");
    let dup = tail[77].clone();
    assert_eq!(ingest.post(&json!(tail)).await.0, 200);
    // The duplicate is stored already, as a retried batch's event would be.
    let id: uuid::Uuid = dup["event_id"].as_str().unwrap().parse().unwrap();
    let time = event_model::timestamp::parse_timestamp(dup["timestamp"].as_str().unwrap()).unwrap();
    client
        .execute(
            "INSERT INTO events (time, event_id, name, source, received_at) VALUES ($1, $2, 'many', 's', now())",
            &[&time, &id],
        )
        .await
        .unwrap();
    let flusher = p.start_flusher(&[], &[]);
    let mut conn = p.redis().await;
    wait_stream_empty(&conn, key).await;
    // 600 queued, one refused, one stored before: 599 rows, each once.
    assert_eq!(db.rows_and_distinct().await, (599, 599));
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 1);
    assert_eq!(pending(&mut conn, key, "flushers").await, 0);
    let page = scrape(&flusher.metrics_url()).await;
    let dedup = labelled_in(
        &page,
        "eventtracker_flusher_batches_written_total",
        "path=\"dedup\"",
    )
    .expect("the batches counter");
    assert!(dedup >= 1.0, "the duplicate took the de-duplication path");
    let written = metric_in(&page, "eventtracker_flusher_events_written_total").unwrap();
    assert_eq!(written, 599.0);
}

/// What the first flusher is told to do while four COPYs of three reads each wait on the lock,
/// each worker holding the next three reads it made meanwhile (read ahead).
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: a crash; its entries stay pending until the second flusher claims them.
    Kill,
    /// SIGTERM, then the lock released: it finishes the four COPYs in hand, writes the four
    /// batches read ahead, and exits.
    Term,
}

async fn group_exists(mut r: MultiplexedConnection, key: &str) -> bool {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async::<Vec<redis::Value>>(&mut r)
        .await
        .is_ok_and(|groups| !groups.is_empty())
}

/// COPY statements of this test's database waiting for a lock: the COPYs in flight.
async fn copies_waiting(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND query LIKE 'COPY events %' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A flusher with four COPYs in flight, each of three reads (the table locked, so they wait),
/// and each worker's next three reads read ahead, is killed or stopped; a second flusher then
/// finishes the work, and every event is stored exactly once.
async fn copies_in_flight_then(stop: Stop) {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    for _ in 0..6 {
        backlog(&p.ingest, "inflight").await;
    }
    let lock = p.db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let flags = [
        "--concurrency",
        "4",
        "--max-copy-rows",
        "300",
        "--consumer",
        "first",
        "--shutdown-timeout-secs",
        "60",
    ];
    let mut first = p.start_flusher(&flags, &[]);
    let mut r = p.redis().await;
    wait_for("the flusher's consumer group", LONG, || {
        let (r, key) = (r.clone(), p.key.clone());
        async move { group_exists(r, &key).await.then_some(()) }
    })
    .await;
    let watcher = p.db.client().await;
    // Each worker: 300 entries in its COPY, 300 read ahead while it waits.
    let want: Vec<(String, u64)> = (0..4).map(|n| (format!("first-{n}"), 600)).collect();
    wait_for(
        "four COPYs of 300 rows in flight, 300 more read ahead each",
        LONG,
        || {
            let (mut r, key, want, watcher) = (r.clone(), p.key.clone(), want.clone(), &watcher);
            async move {
                let mut held = pending_once_grouped(&mut r, &key, "flushers").await?;
                held.sort();
                (held == want && copies_waiting(watcher).await == 4).then_some(())
            }
        },
    )
    .await;

    match stop {
        Stop::Kill => {
            first.proc.signal("KILL");
            let status = first.proc.wait_exit(LONG);
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9)
            );
            lock.batch_execute("ROLLBACK").await.unwrap();
            assert_eq!(pending(&mut r, &p.key, "flushers").await, 2400);
        }
        Stop::Term => {
            first.proc.signal("TERM");
            lock.batch_execute("ROLLBACK").await.unwrap();
            assert!(first.proc.wait_exit(LONG).success());
            assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
            assert_eq!(
                p.db.count().await,
                2400,
                "the four COPYs in hand and the four batches read ahead, no more"
            );
        }
    }

    let second = p.start_flusher(&["--claim-idle-ms", "500", "--consumer", "second"], &[]);
    p.db.wait_rows(3000).await;
    wait_stream_empty(&r, &p.key).await;
    assert_eq!(p.db.rows_and_distinct().await, (3000, 3000));
    assert_eq!(pending(&mut r, &p.key, "flushers").await, 0);
    let claimed = flusher_count(&second, "claimed").await;
    match stop {
        Stop::Kill => assert_eq!(
            claimed, 2400.0,
            "the killed flusher's entries, read ahead too"
        ),
        Stop::Term => assert_eq!(claimed, 0.0, "nothing was left to claim"),
    }
}

#[tokio::test]
async fn sigkill_with_copies_in_flight_stores_each_event_once() {
    copies_in_flight_then(Stop::Kill).await;
}

#[tokio::test]
async fn sigterm_with_copies_in_flight_finishes_them_and_stores_each_event_once() {
    copies_in_flight_then(Stop::Term).await;
}

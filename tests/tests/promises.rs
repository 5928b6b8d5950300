//! Promises users rely on that nothing else exercises: pruning never drops a consumer that
//! still holds entries, SIGTERM under load loses no accepted event, a flusher stopped while
//! PostgreSQL is unavailable leaves its entries pending, and scheduled retention with two
//! flushers drops old chunks once and never a chunk with rows younger than the retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use et_tests::*;
use serde_json::Value;
use uuid::Uuid;

/// A ghost consumer holding 50 pending entries, and a flusher that prunes every idle consumer
/// (`--consumer-idle-secs 0`): the ghost is kept, and its entries are claimed and stored.
#[tokio::test]
async fn ghost_consumer_with_pending_entries_is_kept_and_its_entries_stored() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let (status, _) = ingest.post(&batch("ghosted", 50)).await;
    assert_eq!(status, 200);
    let mut r = p.redis().await;
    a_ghost_reads_everything(&mut r, key).await;
    assert_eq!(
        pending_by_consumer(&mut r, key, "flushers").await,
        vec![("ghost".to_string(), 50)],
        "the ghost holds every entry"
    );

    let flusher = p.start_flusher(
        &[
            "--consumer-idle-secs",
            "0",
            "--claim-idle-ms",
            "200",
            "--consumer",
            "rescuer",
        ],
        &[],
    );
    // Pruning runs first in the flusher's loop (then once a minute): had it dropped the ghost,
    // its pending list would be gone and these rows would never come.
    wait_for(
        "the ghost's 50 entries stored",
        Duration::from_secs(45),
        || async { (db.count().await == 50).then_some(()) },
    )
    .await;
    let base = flusher.metrics_url();
    assert_eq!(
        metric(&base, "eventtracker_flusher_claimed_total").await,
        Some(50.0),
        "stored by claiming the ghost's entries"
    );
    let names: Vec<String> = consumers(&mut r, key, "flushers")
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(names.contains(&"ghost".to_string()), "kept: {names:?}");
    let log = flusher.proc.log_text();
    assert!(!log.contains("removed idle consumer ghost"), "{log}");
    wait_stream_empty(&r, key).await;
    assert_eq!(pending(&mut r, key, "flushers").await, 0);
}

/// The group created at the start of the stream, and every entry read by a consumer `ghost`
/// that never acknowledges: they stay pending with it.
async fn a_ghost_reads_everything(r: &mut MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", key, "flushers", "0"])
        .query_async(r)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "flushers", "ghost", "COUNT", "100"])
        .arg(&["STREAMS", key, ">"])
        .query_async(r)
        .await
        .unwrap();
}

/// What one load task saw: the event_ids of every 200, and every other outcome by kind.
#[derive(Debug, Default)]
struct Load {
    ids: Vec<Uuid>,
    /// 200s whose answer came after SIGTERM was sent: requests in flight at the signal.
    ok_after_term: u32,
    /// Anything but a 200 before SIGTERM: must not happen.
    failed_before_term: Vec<String>,
    /// Non-200 answers and connection errors after SIGTERM, each counted.
    failed_after_term: Vec<String>,
}

/// Posts batches of 200 until the server is gone (a connection error after SIGTERM).
async fn load_until_gone(url: String, termed: Arc<AtomicBool>) -> Load {
    let client = http();
    let mut out = Load::default();
    loop {
        let body = batch("load", 200);
        let res = client
            .post(format!("{url}/v1/events"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let outcome = match res {
            Ok(res) if res.status() == 200 => {
                let reply: Value = res.json().await.unwrap_or(Value::Null);
                Ok(reply)
            }
            Ok(res) => Err((false, format!("status {}", res.status()))),
            Err(e) => Err((true, format!("connection: {e}"))),
        };
        let after = termed.load(SeqCst);
        match outcome {
            Ok(reply) => {
                assert_eq!(reply["accepted"], 200, "{reply}");
                let ids = body.as_array().unwrap().iter();
                out.ids
                    .extend(ids.map(|e| e["event_id"].as_str().unwrap().parse::<Uuid>().unwrap()));
                out.ok_after_term += u32::from(after);
            }
            Err((_, what)) if !after => out.failed_before_term.push(what),
            Err((gone, what)) => {
                out.failed_after_term.push(what);
                if gone {
                    return out;
                }
            }
        }
    }
}

/// ingest-api SIGTERMed while four clients keep posting: it exits 0, the requests in flight
/// get their 200, and every event_id that got a 200 is stored; the flusher wrote exactly those.
#[tokio::test]
async fn ingest_sigterm_under_load_stores_every_accepted_event() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let Pipeline {
        flushers,
        ingest,
        db,
        key,
        redis_url,
    } = &mut p;
    let flusher = &flushers[0];
    let termed = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load_until_gone(ingest.url.clone(), termed.clone())))
        .collect();
    db.wait_rows(2000).await;
    termed.store(true, SeqCst);
    let status = ingest.proc.terminate();
    assert!(status.success(), "ingest-api exit: {status:?}");
    let mut all = Load::default();
    for load in loads {
        let l = load.await.unwrap();
        all.ids.extend(l.ids);
        all.ok_after_term += l.ok_after_term;
        all.failed_before_term.extend(l.failed_before_term);
        all.failed_after_term.extend(l.failed_after_term);
    }
    assert!(all.failed_before_term.is_empty(), "{all:?}");
    assert!(all.ok_after_term > 0, "requests were in flight at SIGTERM");
    assert!(all.failed_after_term.len() >= 4, "each client saw the end");
    let n = all.ids.len() as i64;
    eprintln!(
        "{n} accepted, {} answered 200 after SIGTERM, refused after: {:?}",
        all.ok_after_term, all.failed_after_term
    );
    let r = redis_conn(redis_url).await;
    wait_stream_empty(&r, key).await;
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE event_id = ANY($1)",
            &[&all.ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, n, "every event that got a 200 is stored");
    assert_eq!(db.count().await, n, "and nothing else");
    assert_eq!(written_by(&[flusher]).await, n as f64);
    assert_eq!(dedup_batches(flusher).await, 0.0, "no fault, no de-dup");
}

/// A flusher stopped with 100 entries in hand that it cannot write: it exits 0, the entries
/// stay pending with it, and another flusher stores them once PostgreSQL is back.
async fn stopped_with_postgres_unavailable(pg: &PgServer, freeze: bool, flags: &[&str]) -> String {
    let p = Pipeline::start(PipelineOptions {
        admin_url: Some(&pg.admin_url()),
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let args = [
        &[
            "--batch-size",
            "500",
            "--consumer",
            "stopping",
            "--concurrency",
            "1",
        ],
        flags,
    ]
    .concat();
    let mut flusher = p.start_flusher(&args, &[]);
    flusher.metrics_url();
    if freeze {
        pg.freeze()
    } else {
        pg.stop()
    }
    // Should the test fail with PostgreSQL frozen, thaw it before the database is dropped.
    let thaw = Thaw(pg, freeze);
    let (status, _) = ingest.post(&batch("unwritten", 100)).await;
    assert_eq!(status, 200);
    let mut r = p.redis().await;
    wait_for("the flusher to hold the 100 entries", LONG, || {
        let mut r = r.clone();
        let key = key.clone();
        async move {
            let held = pending_once_grouped(&mut r, &key, "flushers").await?;
            (held == [("stopping".to_string(), 100)]).then_some(())
        }
    })
    .await;
    if !freeze {
        // SIGTERM while it is retrying, not before its first write failed (a race seen in CI).
        wait_for("the flusher to find PostgreSQL down", LONG, || async {
            (flusher_count(&flusher, "postgres_errors").await > 0.0).then_some(())
        })
        .await;
    }
    let status = flusher.proc.terminate();
    assert!(status.success(), "flusher exit: {status:?}");
    assert_eq!(pending(&mut r, key, "flushers").await, 100, "still pending");
    assert_eq!(xlen(&mut r, key).await, 100);
    drop(thaw);
    if !freeze {
        pg.start_server()
    }
    let _rescuer = p.start_flusher(&["--claim-idle-ms", "500"], &[]);
    db.wait_rows(100).await;
    wait_stream_empty(&r, key).await;
    assert_eq!(pending(&mut r, key, "flushers").await, 0);
    assert_eq!(db.count().await, 100);
    flusher.proc.log_text()
}

/// Thaws a frozen PgServer when dropped (a frozen server would hang every later step).
struct Thaw<'a>(&'a PgServer, bool);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.thaw();
        }
    }
}

/// PostgreSQL stopped: the flusher gives up its batch at SIGTERM instead of retrying on.
#[tokio::test]
async fn flusher_sigterm_while_postgres_is_down_leaves_entries_pending() {
    let pg = PgServer::start();
    let log =
        stopped_with_postgres_unavailable(&pg, false, &["--shutdown-timeout-secs", "2"]).await;
    assert!(log.contains("writing to PostgreSQL failed"), "{log}");
    assert!(
        log.contains("shutting down with 100 entries unwritten; they stay pending"),
        "{log}"
    );
}

/// PostgreSQL frozen, a write that would hang for 100 s: `--shutdown-timeout-secs 1` ends the
/// wait (the 60 s bound of `terminate` fails the test otherwise).
#[tokio::test]
async fn flusher_sigterm_while_postgres_hangs_exits_at_the_shutdown_timeout() {
    let pg = PgServer::start();
    let flags = [
        "--shutdown-timeout-secs",
        "1",
        "--pg-timeout-ms",
        "100000",
        "--claim-idle-ms",
        "200000",
    ];
    let log = stopped_with_postgres_unavailable(&pg, true, &flags).await;
    assert!(
        log.contains("shutdown timeout reached; unfinished entries stay pending"),
        "{log}"
    );
}

/// `flusher run --retention 10d --retention-every-secs 1` on two flushers at once: the three
/// chunks holding only rows older than 10 days are dropped, once in all (the lock: every other
/// pass drops 0); every row younger than 10 days stays; and an old row written later goes with
/// a later pass (the schedule repeats).
#[tokio::test]
async fn scheduled_retention_on_two_flushers_drops_old_chunks_once() {
    let db = TestDb::migrated(&shared_admin_url()).await;
    let client = db.client().await;
    client.batch_execute(OLD_AND_YOUNG_ROWS).await.unwrap();
    let key = unique("events");
    let flags = ["--retention", "10d", "--retention-every-secs", "1"];
    let a = Flusher::start(&shared_redis_url(), &db.url, &key, &flags, &[]);
    let b = Flusher::start(&shared_redis_url(), &db.url, &key, &flags, &[]);
    wait_for("the old chunks dropped", LONG, || async {
        (chunks_dropped(&a, &b).iter().sum::<u64>() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        row_names(&client).await,
        ["young"; 3],
        "old rows went with their chunks; no chunk with a row younger than 10 days went"
    );
    // Both flushers ran passes since (each logs even when it drops nothing).
    wait_for("passes of both flushers", LONG, || async {
        (retention_passes(&a).len() >= 2 && retention_passes(&b).len() >= 2).then_some(())
    })
    .await;
    let (da, db_) = (retention_passes(&a), retention_passes(&b));
    assert_eq!(
        chunks_dropped(&a, &b),
        vec![3],
        "one flusher dropped the three chunks, once: {da:?} {db_:?}"
    );
    // The schedule repeats: an old row written now is gone with a later pass.
    client
        .batch_execute(
            "INSERT INTO events (time, event_id, name, source, received_at)
             VALUES (now() - interval '50 days', gen_random_uuid(), 'late-old', 's', now())",
        )
        .await
        .unwrap();
    wait_for("the late old row dropped by a later pass", LONG, || async {
        let names = row_names(&client).await;
        (!names.iter().any(|n| n == "late-old")).then_some(())
    })
    .await;
    // The pass logs its count just after its drop commits: wait for the line.
    wait_for("the later pass to log its drop", LONG, || async {
        (chunks_dropped(&a, &b).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        chunks_dropped(&a, &b),
        vec![1, 3],
        "the first pass dropped 3 chunks, a later one 1"
    );
}

/// Three rows 20, 30 and 40 days old (each in a chunk of its own) and three younger than 10
/// days, the oldest of them an hour short of it.
const OLD_AND_YOUNG_ROWS: &str = "
    INSERT INTO events (time, event_id, name, source, received_at)
    SELECT now() - d * interval '1 day', gen_random_uuid(), 'old', 's', now()
    FROM generate_series(20, 40, 10) AS d;
    INSERT INTO events (time, event_id, name, source, received_at)
    SELECT now() - a, gen_random_uuid(), 'young', 's', now()
    FROM unnest(ARRAY[interval '10 days' - interval '1 hour', interval '5 days',
                      interval '0']) AS a";

/// The chunks each retention pass of a flusher dropped, from its log (`retention: dropped N
/// …`, logged by every pass; no metric counts them).
fn retention_passes(f: &Flusher) -> Vec<u64> {
    let log = f.proc.log_text();
    let lines = log
        .lines()
        .filter_map(|l| l.split("retention: dropped ").nth(1));
    lines
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// The passes of two flushers that dropped anything, smallest first.
fn chunks_dropped(a: &Flusher, b: &Flusher) -> Vec<u64> {
    let mut nonzero: Vec<u64> = [retention_passes(a), retention_passes(b)]
        .concat()
        .into_iter()
        .filter(|n| *n > 0)
        .collect();
    nonzero.sort_unstable();
    nonzero
}

/// Every row's name, sorted.
async fn row_names(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT name FROM events ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

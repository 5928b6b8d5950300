//! The faults an operator meets, as the flusher reports them: a full disk (its SQLSTATE in the
//! log and on the error counter, `/readyz` 503 while writes fail), a flusher cut off from Redis
//! (its queue gauges marked unknown, not frozen), a column whose type changed (refused at start,
//! never a reason to dead-letter), and the papercuts around them: `flusher run` flags, consumers
//! left in the group, `dead-letters purge --all` reading everything into memory.

use std::process::Command;
use std::time::Duration;

use et_tests::*;

/// GET `path` of a flusher's probe server: (status, body).
async fn probe(flusher: &Flusher, path: &str) -> (u16, String) {
    let res = http()
        .get(format!("{}{path}", flusher.metrics_url()))
        .send()
        .await
        .expect("probe answered");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// Waits until `/readyz` answers `status`; returns its body.
async fn wait_ready_status(flusher: &Flusher, status: u16) -> String {
    wait_for(&format!("/readyz {status}"), LONG, || async {
        let (s, body) = probe(flusher, "/readyz").await;
        (s == status).then_some(body)
    })
    .await
}

/// A full disk, as PostgreSQL reports it (SQLSTATE 53100), on every row written to `events`.
const DISK_FULL: &str = r#"
    CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device'
        USING ERRCODE = '53100';
    END $$;
    CREATE TRIGGER disk_full BEFORE INSERT ON events
      FOR EACH ROW EXECUTE FUNCTION disk_full();"#;

/// While PostgreSQL refuses every write for a full disk, the flusher logs the SQLSTATE and the
/// message, counts the errors under `class="53"`, and answers `/readyz` 503 (naming the
/// failure); once space is back the rows are written, nothing dead-lettered, and it is ready
/// again.
#[tokio::test]
async fn a_full_disk_is_named_counted_and_makes_the_flusher_unready() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let flusher = &p.flushers[0];
    wait_ready_status(flusher, 200).await;
    let db = p.db.client().await;
    db.batch_execute(DISK_FULL).await.unwrap();
    p.ingest.post_ok(&batch("disk", 5)).await;

    let body = wait_ready_status(flusher, 503).await;
    assert!(body.contains("53100"), "/readyz names the failure: {body}");
    let log = wait_for("the SQLSTATE in the log", LONG, || async {
        let log = flusher.proc.log_text();
        log.contains("No space left on device").then_some(log)
    })
    .await;
    assert!(log.contains("53100"), "the SQLSTATE is logged:\n{log}");
    let page = scrape(&flusher.metrics_url()).await;
    let class53 = labelled_in(
        &page,
        "eventtracker_flusher_postgres_errors_total",
        "class=\"53\"",
    );
    assert!(
        class53.is_some_and(|n| n > 0.0),
        "class 53 counted:\n{page}"
    );

    db.batch_execute("DROP TRIGGER disk_full ON events")
        .await
        .unwrap();
    p.db.wait_rows(5).await;
    wait_ready_status(flusher, 200).await;
    assert_eq!(dead_lettered_by(flusher).await, 0.0);
}

/// Writes that wait on a lock past `--pg-timeout-ms` make the flusher unready too (counted
/// under `class="timeout"`: no SQLSTATE), and ready again after the write that succeeds.
#[tokio::test]
async fn writes_that_time_out_make_the_flusher_unready_until_one_succeeds() {
    let p = Pipeline::start(PipelineOptions {
        flusher: &["--pg-timeout-ms", "300", "--claim-idle-ms", "5000"],
        ..Default::default()
    })
    .await;
    let flusher = &p.flushers[0];
    wait_ready_status(flusher, 200).await;
    let lock = p.db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    p.ingest.post_ok(&batch("locked", 5)).await;
    let body = wait_ready_status(flusher, 503).await;
    assert!(body.contains("300 ms"), "/readyz says why: {body}");
    let page = scrape(&flusher.metrics_url()).await;
    let timeouts = labelled_in(
        &page,
        "eventtracker_flusher_postgres_errors_total",
        "class=\"timeout\"",
    );
    assert!(timeouts.is_some_and(|n| n > 0.0), "{page}");
    lock.batch_execute("COMMIT").await.unwrap();
    p.db.wait_rows(5).await;
    wait_ready_status(flusher, 200).await;
}

/// Thaws a frozen private Redis when dropped, so a failing test never leaves it stopped.
struct ThawRedis<'a>(&'a RedisServer);

impl Drop for ThawRedis<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// Backlog and lag on a `/metrics` page taken while no shard could be read: absent or NaN, never
/// the last reading.
fn assert_queue_gauges_unknown(page: &str) {
    for gauge in [
        "eventtracker_queue_backlog",
        "eventtracker_queue_lag_seconds",
    ] {
        let v = metric_in(page, gauge);
        assert!(
            v.is_none_or(f64::is_nan),
            "{gauge} must not keep its last reading ({v:?}) while Redis is unreachable:\n{page}"
        );
    }
}

/// A flusher that cannot reach Redis does not keep exporting its last reading of the queue (0
/// and 0 while the real backlog grows): it says the state is unknown
/// (`eventtracker_queue_state_known 0`) and its backlog and lag samples are NaN, which `max()`
/// in the alerting rules skips. Once Redis answers again the gauges are numbers again.
#[tokio::test]
async fn a_flusher_cut_off_from_redis_marks_its_queue_gauges_unknown() {
    let redis = RedisServer::start();
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&redis.url()),
        flusher: &["--redis-timeout-ms", "300"],
        ..Default::default()
    })
    .await;
    let flusher = &p.flushers[0];
    let url = flusher.metrics_url();
    p.ingest.post_ok(&batch("before", 3)).await;
    p.db.wait_rows(3).await;
    wait_for("a known, empty queue", LONG, || async {
        let page = scrape(&url).await;
        (metric_in(&page, "eventtracker_queue_state_known") == Some(1.0)
            && metric_in(&page, "eventtracker_queue_backlog") == Some(0.0))
        .then_some(())
    })
    .await;

    redis.freeze();
    let thaw = ThawRedis(&redis);
    let page = wait_for("the queue state marked unknown", LONG, || async {
        let page = scrape(&url).await;
        (metric_in(&page, "eventtracker_queue_state_known") == Some(0.0)).then_some(page)
    })
    .await;
    assert_queue_gauges_unknown(&page);
    drop(thaw);
    wait_for("the queue state known again", LONG, || async {
        let page = scrape(&url).await;
        (metric_in(&page, "eventtracker_queue_state_known") == Some(1.0)
            && metric_in(&page, "eventtracker_queue_backlog") == Some(0.0))
        .then_some(())
    })
    .await;
}

/// ingest-api's queue gauges mean what the flusher's do: cut off from Redis it does not keep
/// exporting its last reading (a backlog of 3 while the real one grows) but says the state is
/// unknown (`eventtracker_queue_state_known 0`, backlog and lag NaN). Once Redis answers again
/// the gauges are numbers again.
#[tokio::test]
async fn ingest_api_cut_off_from_redis_marks_its_queue_gauges_unknown() {
    let redis = RedisServer::start();
    let ingest = Ingest::start(
        &redis.url(),
        &unique("unknown"),
        &["--redis-timeout-ms", "300"],
    );
    assert_eq!(ingest.post(&batch("before", 3)).await.0, 200);
    let known_backlog_of_3 = || async {
        let page = scrape(&ingest.url).await;
        (metric_in(&page, "eventtracker_queue_state_known") == Some(1.0)
            && metric_in(&page, "eventtracker_queue_backlog") == Some(3.0))
        .then_some(())
    };
    wait_for("a known backlog of 3", LONG, known_backlog_of_3).await;

    redis.freeze();
    let thaw = ThawRedis(&redis);
    let page = wait_for("the queue state marked unknown", LONG, || async {
        let page = scrape(&ingest.url).await;
        (metric_in(&page, "eventtracker_queue_state_known") == Some(0.0)).then_some(page)
    })
    .await;
    assert_queue_gauges_unknown(&page);
    drop(thaw);
    wait_for("the queue state known again", LONG, known_backlog_of_3).await;
}

/// `device_id` made an integer: the column the flusher writes as text.
const DEVICE_ID_INTEGER: &str =
    "ALTER TABLE events ALTER COLUMN device_id TYPE integer USING NULL::integer";

/// A flusher started on an `events` table whose column has another type than the one it
/// writes refuses to start, naming the column and both types.
#[tokio::test]
async fn a_column_of_another_type_stops_the_flusher_at_start() {
    let db = TestDb::migrated(&shared_admin_url()).await;
    db.client()
        .await
        .batch_execute(DEVICE_ID_INTEGER)
        .await
        .unwrap();
    let mut flusher = Flusher::start(&shared_redis_url(), &db.url, &unique("events"), &[], &[]);
    let status = flusher.proc.wait_exit(Duration::from_secs(60));
    let log = flusher.proc.log_text();
    assert!(!status.success(), "refused to start:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("device_id"))
        .unwrap_or_else(|| panic!("the column is named:\n{log}"));
    assert!(
        line.contains("text") && line.contains("integer"),
        "expected and found types named: {line}"
    );
}

/// A column whose type changes under a running flusher (SQLSTATE 22P03 on the binary COPY) is
/// no reason to dead-letter: the flusher stops with the column named, the entries stay queued,
/// and once the column is back a flusher writes them all.
#[tokio::test]
async fn a_column_changed_under_a_running_flusher_dead_letters_nothing() {
    let p = Pipeline::start(PipelineOptions {
        flusher: &["--claim-idle-ms", "1000", "--concurrency", "1"],
        ..Default::default()
    })
    .await;
    p.ingest.post_ok(&batch("before", 5)).await;
    p.db.wait_rows(5).await;
    let db = p.db.client().await;
    db.batch_execute(DEVICE_ID_INTEGER).await.unwrap();
    p.ingest.post_ok(&batch("after", 5)).await;

    let mut flusher = p.flushers.into_iter().next().unwrap();
    let status = flusher.proc.wait_exit(LONG);
    let log = flusher.proc.log_text();
    assert!(!status.success(), "the flusher stopped:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("device_id") && l.contains("integer")),
        "the column is named:\n{log}"
    );
    let mut r = redis_conn(&p.redis_url).await;
    assert_eq!(
        xlen(&mut r, &format!("{}:dead", p.key)).await,
        0,
        "nothing dead-lettered:\n{log}"
    );
    assert_eq!(
        xlen(&mut r, &p.key).await,
        5,
        "the entries wait in the queue"
    );

    db.batch_execute("ALTER TABLE events ALTER COLUMN device_id TYPE text")
        .await
        .unwrap();
    let _rescuer = Flusher::start(
        &p.redis_url,
        &p.db.url,
        &p.key,
        &["--claim-idle-ms", "1000"],
        &[],
    );
    p.db.wait_rows(10).await;
    wait_stream_empty(&r, &p.key).await;
}

/// The options `BINARY ARGS… --help` lists.
fn help_flags(args: &[&str]) -> Vec<String> {
    let out = Command::new(bin("flusher"))
        .args(args)
        .arg("--help")
        .output()
        .expect("flusher --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|f| format!("--{f}"))
        .collect()
}

/// `flusher` and `flusher run` are the same: every option of `flusher --help` is taken after
/// `run` as well, and a flusher started as `flusher run --metrics-bind … --batch-size …` runs.
#[tokio::test]
async fn flusher_run_takes_every_run_flag() {
    let top = help_flags(&[]);
    let run = help_flags(&["run"]);
    for flag in &top {
        assert!(run.contains(flag), "`flusher run --help` lacks {flag}");
    }
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let mut cmd = Command::new(bin("flusher"));
    cmd.arg("run")
        .args(["--redis-url", &p.redis_url, "--database-url", &p.db.url])
        .args(["--stream-key", &p.key, "--metrics-bind", "127.0.0.1:0"])
        .args([
            "--batch-size",
            "7",
            "--concurrency",
            "1",
            "--block-ms",
            "200",
        ])
        .args(["--consumer", "after-run"])
        .env("RUST_LOG", "info");
    let flusher = Flusher {
        proc: Proc::spawn("flusher", cmd),
    };
    flusher.metrics_url();
    p.ingest.post_ok(&batch("run", 10)).await;
    p.db.wait_rows(10).await;
}

/// A flusher stopped with SIGTERM removes its consumers from the group (none is left behind
/// for an hour); a consumer that still holds pending entries stays, so nothing is lost.
#[tokio::test]
async fn a_cleanly_stopped_flusher_leaves_the_group() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let mut r = p.redis().await;
    let mut leaver = p.start_flusher(&["--consumer", "leaver", "--concurrency", "2"], &[]);
    p.ingest.post_ok(&batch("leave", 20)).await;
    p.db.wait_rows(20).await;
    wait_stream_empty(&r, &p.key).await;
    let names = |c: Vec<(String, u64)>| c.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert!(
        !consumers(&mut r, &p.key, "flushers").await.is_empty(),
        "the consumers that read are in the group"
    );
    assert!(leaver.proc.terminate().success());
    assert_eq!(
        names(consumers(&mut r, &p.key, "flushers").await),
        Vec::<String>::new(),
        "a stopped flusher's consumers are gone:\n{}",
        leaver.proc.log_text()
    );

    // A consumer with pending entries stays in the group when its flusher stops.
    let lock = p.db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    let mut holder = p.start_flusher(
        &[
            "--consumer",
            "holder",
            "--concurrency",
            "1",
            "--pg-timeout-ms",
            "300",
        ],
        &[],
    );
    p.ingest.post_ok(&batch("held", 5)).await;
    wait_for("the holder to hold 5 entries", LONG, || {
        let mut r = r.clone();
        let key = p.key.clone();
        async move {
            let held = pending_once_grouped(&mut r, &key, "flushers").await?;
            (held == [("holder".to_string(), 5)]).then_some(())
        }
    })
    .await;
    assert!(holder.proc.terminate().success());
    assert_eq!(
        consumers(&mut r, &p.key, "flushers").await,
        [("holder".to_string(), 5)],
        "{}",
        holder.proc.log_text()
    );
    lock.batch_execute("COMMIT").await.unwrap();
}

/// Runs `flusher ARGS…` under GNU time: (exit ok, stdout, peak RSS in KiB).
fn run_measured(args: &[&str]) -> (bool, String, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(bin("flusher"))
        .args(args)
        .output()
        .expect("/usr/bin/time flusher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in:\n{stderr}"));
    (
        out.status.success(),
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
        rss,
    )
}

/// `flusher dead-letters purge --all` on 20,000 dead letters of 2 KiB (40 MiB) deletes them all
/// and says how many, without reading them into memory: its peak RSS stays within 16 MiB of a
/// purge of an empty stream.
#[tokio::test]
async fn purging_every_dead_letter_does_not_read_them_into_memory() {
    let redis_url = shared_redis_url();
    let (key, empty_key) = (unique("events"), unique("events"));
    let dead = format!("{key}:dead");
    let mut r = redis_conn(&redis_url).await;
    let filler = "x".repeat(2048);
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            pipe.cmd("XADD")
                .arg(&dead)
                .arg("*")
                .arg("e")
                .arg(&filler)
                .arg("dl_reason")
                .arg("test")
                .ignore();
        }
        let () = pipe.query_async(&mut r).await.unwrap();
    }
    assert_eq!(xlen(&mut r, &dead).await, 20_000);
    let purge = |k: &str| {
        let args = [
            "dead-letters",
            "purge",
            "--all",
            "--redis-url",
            &redis_url,
            "--stream-key",
            k,
        ];
        run_measured(&args)
    };
    let (ok, out, base) = purge(&empty_key);
    assert!(ok, "{out}");
    let (ok, out, rss) = purge(&key);
    assert!(ok, "{out}");
    assert!(out.contains("purged 20000 dead letters"), "{out}");
    assert_eq!(xlen(&mut r, &dead).await, 0);
    assert!(
        rss < base + 16 * 1024,
        "peak RSS {rss} KiB against {base} KiB for an empty stream: the dead letters were read"
    );
    let _: () = redis::cmd("DEL")
        .arg(&dead)
        .query_async(&mut r)
        .await
        .unwrap();
}

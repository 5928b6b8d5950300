//! Token rotation without a restart: ingest-api rereads its tokens file (and the rate limits in
//! it) when the file changes and on SIGHUP; a broken file keeps the set in force. SIGHUP never
//! stops either binary.

use std::path::Path;
use std::time::{Duration, Instant};

use et_tests::*;
use serde_json::Value;

/// Replaces the file's content as an operator's tooling does (a new file renamed over it).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post_as(ingest: &Ingest, token: &str, body: &Value) -> u16 {
    post_json(&format!("{}/v1/events", ingest.url), Some(token), body)
        .await
        .0
}

/// Waits until `token` is answered `status`; panics past `limit` after `since`.
async fn wait_status(ingest: &Ingest, token: &str, status: u16, since: Instant, limit: Duration) {
    loop {
        let got = post_as(ingest, token, &batch("reload", 1)).await;
        if got == status {
            return;
        }
        assert!(
            since.elapsed() < limit,
            "token still answered {got} {:?} after the file changed (wanted {status})",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tokens_file_changes_apply_within_a_second_and_a_broken_file_keeps_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "game=old-secret-0123456789\n").unwrap();
    let key = unique("reload");
    let ingest = Ingest::start(
        &shared_redis_url(),
        &key,
        &[
            "--tokens-file",
            file.to_str().unwrap(),
            "--max-events",
            "10",
        ],
    );
    assert_eq!(
        post_as(&ingest, "old-secret-0123456789", &batch("reload", 1)).await,
        200
    );

    // Rotation: the removed token answers 401 within a second, the added one works.
    replace(&file, "game=new-secret-0123456789\n");
    let changed = Instant::now();
    wait_status(
        &ingest,
        "old-secret-0123456789",
        401,
        changed,
        Duration::from_secs(1),
    )
    .await;
    wait_status(
        &ingest,
        "new-secret-0123456789",
        200,
        changed,
        Duration::from_secs(1),
    )
    .await;

    // A broken file: the set in force stays, the log says why, a metric counts it.
    replace(
        &file,
        "game=new-secret-0123456789\nthis line is not a token\n",
    );
    let log = wait_for("the broken file to be logged", LONG, || async {
        let text = ingest.proc.log_text();
        text.contains("line 2").then_some(text)
    })
    .await;
    assert!(log.contains("keeping"), "{log}");
    assert!(!log.contains("new-secret"), "a secret must never be logged");
    assert_eq!(
        post_as(&ingest, "new-secret-0123456789", &batch("reload", 1)).await,
        200
    );
    let page = scrape(&ingest.url).await;
    assert_eq!(
        labelled_in(
            &page,
            "eventtracker_ingest_reloads_total",
            "what=\"tokens\",result=\"error\""
        ),
        Some(1.0),
        "{page}"
    );

    // Rate limits come with the tokens: a limit added to the file applies (burst 10, then a
    // rate far too slow to refill).
    replace(
        &file,
        "game=new-secret-0123456789 rate=0.001 burst=10\ngame=second-0123456789\n",
    );
    let changed = Instant::now();
    wait_status(
        &ingest,
        "second-0123456789",
        200,
        changed,
        Duration::from_secs(1),
    )
    .await;
    // One batch of 10 fills the burst; the next is refused.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_as(&ingest, "new-secret-0123456789", &batch("limited", 10)).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let page = scrape(&ingest.url).await;
    assert!(
        labelled_in(
            &page,
            "eventtracker_ingest_reloads_total",
            "what=\"tokens\",result=\"ok\""
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{page}"
    );
}

/// SIGHUP rereads the tokens file (said in the log) and stops neither ingest-api nor the
/// flusher; both keep working after it.
#[tokio::test]
async fn sighup_reloads_and_stops_neither_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "game=hup-secret-0123456789\n").unwrap();
    let mut p = Pipeline::start(PipelineOptions {
        ingest: &["--tokens-file", file.to_str().unwrap()],
        ..Default::default()
    })
    .await;
    p.ingest.post_ok(&batch("before", 5)).await;
    p.db.wait_rows(5).await;

    p.ingest.proc.signal("HUP");
    p.flushers[0].proc.signal("HUP");
    let start = Instant::now();
    while !p.ingest.proc.log_text().contains("SIGHUP") {
        assert!(p.ingest.proc.is_running(), "SIGHUP stopped ingest-api");
        assert!(start.elapsed() < LONG, "ingest-api did not log the SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(p.ingest.proc.is_running(), "SIGHUP stopped ingest-api");
    assert!(
        p.flushers[0].proc.is_running(),
        "SIGHUP stopped the flusher"
    );
    assert!(
        p.flushers[0].proc.log_text().contains("SIGHUP"),
        "the flusher says what it did with SIGHUP"
    );

    // Both still do their work.
    p.ingest.post_ok(&batch("after", 5)).await;
    assert_eq!(
        post_as(&p.ingest, "hup-secret-0123456789", &batch("after", 1)).await,
        200
    );
    p.db.wait_rows(11).await;
}

/// Revoking every token of a source that `--rate-limits` names is a reload like any other: the
/// flag's limit for a source no token has any more is set aside (and logged), not a reason to
/// keep the revoked token working.
#[tokio::test]
async fn revoking_a_source_named_in_rate_limits_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "game=compromised-0123456789\nweb=web-secret-0123456789\n",
    )
    .unwrap();
    let ingest = Ingest::start(
        &shared_redis_url(),
        &unique("reload"),
        &[
            "--tokens-file",
            file.to_str().unwrap(),
            "--max-events",
            "10",
            "--rate-limits",
            "game=1000/1000",
        ],
    );
    assert_eq!(
        post_as(&ingest, "compromised-0123456789", &batch("reload", 1)).await,
        200
    );
    replace(&file, "web=web-secret-0123456789\n");
    let changed = Instant::now();
    wait_status(
        &ingest,
        "compromised-0123456789",
        401,
        changed,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        post_as(&ingest, "web-secret-0123456789", &batch("reload", 1)).await,
        200
    );
    let log = ingest.proc.log_text();
    assert!(
        log.contains("--rate-limits") && log.contains("\"game\""),
        "{log}"
    );

    // The source comes back: its flag limit applies again.
    replace(
        &file,
        "web=web-secret-0123456789\ngame=rotated-0123456789\n",
    );
    wait_status(
        &ingest,
        "rotated-0123456789",
        200,
        Instant::now(),
        Duration::from_secs(1),
    )
    .await;
}

/// A SIGHUP while ingest-api is still starting (here: waiting for a Redis that accepts and never
/// answers, up to `--redis-timeout-ms`) does not end it either.
#[tokio::test]
async fn sighup_during_start_up_does_not_end_ingest_api() {
    // A "Redis" that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut cmd = std::process::Command::new(bin("ingest-api"));
    cmd.args(["--bind", "127.0.0.1:0", "--tokens", "s=secret-0123456789"])
        .args(["--redis-url", &format!("redis://{addr}/")])
        .args(["--redis-timeout-ms", "5000"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(child.id(), "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    holder.abort();
    assert_eq!(exited, None, "SIGHUP during start-up ended ingest-api");
}

/// A tokens file changed while ingest-api is still starting (here: waiting up to
/// `--redis-timeout-ms` for a Redis that never answers) is not missed: what the server uses once
/// it answers is the file as it is, not as it was when start-up began.
#[tokio::test]
async fn a_tokens_file_changed_during_start_up_is_not_missed() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "game=before-start-0123456789\n").unwrap();
    let ingest = Ingest::start(
        &format!("redis://{addr}/"),
        &unique("reload"),
        &[
            "--tokens-file",
            file.to_str().unwrap(),
            "--redis-timeout-ms",
            "3000",
        ],
    );
    // ingest-api printed its address and is waiting for Redis; the file changes meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    replace(&file, "game=during-start-0123456789\n");
    // Once it answers (Redis never does: a known token gets 503, an unknown one 401), the old
    // token is refused within a second.
    let client = http();
    let answered = wait_for("ingest-api to answer", LONG, || async {
        client
            .get(format!("{}/healthz", ingest.url))
            .send()
            .await
            .ok()
            .map(|_| Instant::now())
    })
    .await;
    wait_status(
        &ingest,
        "before-start-0123456789",
        401,
        answered,
        Duration::from_secs(1),
    )
    .await;
    assert_ne!(
        post_as(&ingest, "during-start-0123456789", &batch("reload", 1)).await,
        401
    );
    holder.abort();
}

//! Restarts without refused connections. A new ingest-api binds the port the old one serves
//! (SO_REUSEPORT); the old one, on SIGTERM, answers `/readyz` 503 at once, keeps serving for
//! `--drain-delay-secs` with `Connection: close` on every answer, then stops taking connections
//! and finishes those in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use et_tests::*;
use serde_json::json;

/// A client sending steadily, one batch after the other on a keep-alive pool, through a rolling
/// restart on one port: no connection refused, every batch acknowledged (retried otherwise),
/// and every acknowledged event stored once.
#[tokio::test]
async fn a_rolling_restart_on_one_port_refuses_no_connection_and_loses_nothing() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let bind = format!("127.0.0.1:{}", free_port());
    let flags = ["--bind", bind.as_str(), "--drain-delay-secs", "2"];
    let mut old = Ingest::start(&p.redis_url, &p.key, &flags);
    let url = old.url.clone();
    let counts = Arc::new(Counts::default());
    let client = tokio::spawn(send_steadily(url.clone(), counts.clone()));
    wait_for("the client under way", LONG, || async {
        (counts.acked.load(Ordering::Relaxed) >= 100).then_some(())
    })
    .await;
    // Both on the port at once; then the old one leaves.
    let new = Ingest::start(&p.redis_url, &p.key, &flags);
    assert_eq!(new.url, url);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(old.proc.terminate().success(), "{}", old.proc.log_text());
    let log = old.proc.log_text();
    assert!(log.contains("draining: /readyz answers 503"), "{log}");
    // Requests go on, to the new one only now.
    let before = counts.acked.load(Ordering::Relaxed);
    wait_for("batches acknowledged by the new instance", LONG, || async {
        (counts.acked.load(Ordering::Relaxed) >= before + 100).then_some(())
    })
    .await;
    counts.stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let acked = counts.acked.load(Ordering::Relaxed);
    let (refused, other) = (
        counts.refused.load(Ordering::Relaxed),
        counts.other_errors.load(Ordering::Relaxed),
    );
    eprintln!("{acked} events acknowledged; {refused} connections refused, {other} other errors");
    assert_eq!(refused, 0, "connections refused ({other} other errors)");
    assert!(accepted_by(&new).await > 0.0, "the new instance served");
    p.db.wait_rows(acked as i64).await;
    assert_eq!(
        p.db.rows_and_distinct().await,
        (acked as i64, acked as i64),
        "every acknowledged event stored once ({other} errors other than refusals, retried)"
    );
}

/// Readiness turns 503 as soon as SIGTERM arrives, while requests are still served: a load
/// balancer stops sending before the listener closes.
#[tokio::test]
async fn on_sigterm_readiness_fails_first_and_requests_are_still_served_with_connection_close() {
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--drain-delay-secs", "3"],
        ..Default::default()
    })
    .await;
    let http = http();
    let ready = http
        .get(format!("{}/readyz", p.ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    p.ingest.proc.signal("TERM");
    wait_for("/readyz to answer 503", Duration::from_secs(10), || async {
        let r = http
            .get(format!("{}/readyz", p.ingest.url))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 503).then_some(())
    })
    .await;
    let res = p.ingest.send(&batch("draining", 3)).await;
    assert_eq!(res.status().as_u16(), 200, "still served while draining");
    assert_eq!(
        res.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "keep-alive connections are closed while draining"
    );
    p.db.wait_rows(3).await;
}

#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    refused: AtomicU64,
    other_errors: AtomicU64,
    stop: AtomicBool,
}

/// Batches of 10 with fresh ids, each retried until acknowledged.
async fn send_steadily(url: String, counts: Arc<Counts>) {
    let http = http();
    let mut n = 0;
    while !counts.stop.load(Ordering::Relaxed) {
        let body = json!({"events": batch("steady", 10)}).to_string();
        n += 1;
        loop {
            let res = http
                .post(format!("{url}/v1/events"))
                .header("Content-Type", "application/json")
                .header("Authorization", format!("Bearer {TOKEN}"))
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().as_u16() == 200 => break,
                Ok(r) => panic!("batch {n}: status {}", r.status()),
                Err(e) if e.is_connect() => counts.refused.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.other_errors.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        counts.acked.fetch_add(10, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
